// Home: each widget is one live API call, refreshed every REFRESH_MS.

import { echarts } from "./charts";

import * as api from "./api";
import { escapeHtml, named, rate } from "./format";

const REFRESH_MS = 30_000;

interface Widget {
  id: string;
  title: string;
  wide?: boolean;
  render(body: HTMLElement): Promise<void>;
}

function topTable(dimension: string, label: string): Widget["render"] {
  return async (body) => {
    const answer = await api.flows({ from: "-1h", dimensions: dimension, limit: 5, points: 1 });
    const rows = answer.series
      .map((s) => `<tr><td>${escapeHtml(s.dimensions.map((d) => named(d, answer.names)).join(" / "))}</td><td class="num">${rate(s.average, "bps")}</td></tr>`)
      .join("");
    body.innerHTML = `<table><thead><tr><th scope="col">${label}</th><th scope="col" class="num">last hour</th></tr></thead>` +
      `<tbody>${rows || '<tr><td colspan="2">no traffic yet</td></tr>'}</tbody></table>`;
  };
}

const WIDGETS: Widget[] = [
  {
    id: "rate-now",
    title: "Traffic now (last 5 minutes)",
    async render(body) {
      const [bps, pps] = await Promise.all([
        api.flows({ from: "-5m", points: 1, unit: "bps" }),
        api.flows({ from: "-5m", points: 1, unit: "pps" }),
      ]);
      const bits = bps.series[0]?.average ?? 0;
      const packets = pps.series[0]?.average ?? 0;
      body.innerHTML = `<p class="big" data-value="${bits}">${rate(bits, "bps")}</p><p>${rate(packets, "pps")}</p>`;
    },
  },
  {
    id: "rate-hour",
    title: "bps over the last hour",
    wide: true,
    async render(body) {
      const answer = await api.flows({ from: "-1h", points: 60 });
      const values = answer.series[0]?.values ?? answer.time.map(() => 0);
      const chart = echarts.getInstanceByDom(body) ?? echarts.init(body, undefined, { renderer: "canvas" });
      chart.setOption({
        animation: false, // (drawn at once: a screenshot or a glance shows the whole hour)
        grid: { left: 60, right: 10, top: 10, bottom: 24 },
        xAxis: { type: "time" },
        yAxis: { type: "value", axisLabel: { formatter: (v: number) => rate(v, "bps") } },
        tooltip: { trigger: "axis", valueFormatter: (v: number) => rate(v, "bps") },
        series: [{ type: "line", showSymbol: false, areaStyle: {}, data: answer.time.map((t, i) => [t * 1000, values[i]]) }],
      });
      body.dataset.points = String(answer.time.length);
    },
  },
  { id: "top-exporters", title: "Top exporters", render: topTable("ExporterName", "exporter") },
  { id: "top-as", title: "Top source AS", render: topTable("SrcAS", "AS") },
  { id: "top-countries", title: "Top source countries", render: topTable("SrcCountry", "country") },
  { id: "top-ports", title: "Top protocols and ports", render: topTable("Proto,DstPort", "protocol / port") },
  {
    id: "last-flow",
    title: "Last flow received",
    wide: true,
    async render(body) {
      const flow = await api.lastFlow();
      if (!flow) {
        body.textContent = "no flow stored yet";
        return;
      }
      const cells = Object.entries(flow)
        .filter(([, value]) => value !== "" && value !== 0 && value !== "0" && !(Array.isArray(value) && !value.length))
        .map(([name, value]) => `<dt>${escapeHtml(name)}</dt><dd>${escapeHtml(Array.isArray(value) ? value.join(" ") : value)}</dd>`)
        .join("");
      body.innerHTML = `<dl class="fields">${cells}</dl>`;
    },
  },
  {
    id: "exporters",
    title: "Exporters and their interfaces",
    wide: true,
    async render(body) {
      const list = await api.exporters();
      body.innerHTML = list.length
        ? list.map((e) => `<details><summary>${escapeHtml(e.name || e.address)} <small>${escapeHtml(e.address)}, ` +
            `${e.interfaces.length} interfaces</small></summary><table><tbody>` +
            e.interfaces.map((i) => `<tr><td>${i.ifindex}</td><td>${escapeHtml(i.name)}</td>` +
              `<td>${escapeHtml(i.description)}</td><td class="num">${i.speed ? i.speed + " Mbps" : ""}</td></tr>`).join("") +
            "</tbody></table></details>").join("")
        : "no exporter seen yet";
    },
  },
];

let timer: number | undefined;

export function showHome(page: HTMLElement): void {
  page.innerHTML = `<h1>Home</h1><div class="widgets">${WIDGETS.map((w) =>
    `<section class="widget${w.wide ? " wide" : ""}" id="${w.id}" aria-labelledby="${w.id}-title">` +
    `<h2 id="${w.id}-title">${w.title}</h2><div class="body" aria-busy="true"></div></section>`).join("")}</div>`;
  const refresh = () => {
    for (const widget of WIDGETS) {
      const section = document.getElementById(widget.id);
      const body = section?.querySelector<HTMLElement>(".body");
      if (!body) continue;
      widget.render(body)
        .then(() => { body.setAttribute("aria-busy", "false"); section!.dataset.filled = "true"; })
        .catch((err: Error) => {
          body.setAttribute("aria-busy", "false");
          body.textContent = `unavailable: ${err.message}`;
          if (err instanceof api.ApiError && err.status === 401) window.dispatchEvent(new Event("waxflow-unauthorized"));
        });
    }
  };
  refresh();
  window.clearInterval(timer);
  timer = window.setInterval(() => (document.getElementById("rate-now") ? refresh() : window.clearInterval(timer)), REFRESH_MS);
}
