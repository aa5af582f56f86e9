// Home: each widget is one live API call, refreshed every REFRESH_MS.

import { echarts } from "./charts";

import * as api from "./api";
import { escapeHtml, rate } from "./format";

const REFRESH_MS = 30_000;

interface Widget {
  id: string;
  title: string;
  wide?: boolean;
  render(body: HTMLElement): Promise<void>;
}

function topTable(dimension: string, label: string): Widget["render"] {
  return async (body) => {
    const answer = await api.top(dimension, 5);
    const rows = answer.top
      .map((t) => `<tr><td>${escapeHtml(t.name ? `${t.value} ${t.name}` : t.value)}</td><td class="num">${rate(t.rate, "bps")}</td>` +
        `<td class="num">${t.percent.toFixed(1)} %</td></tr>`)
      .join("");
    body.innerHTML = `<table><thead><tr><th scope="col">${label}</th><th scope="col" class="num">last hour</th>` +
      `<th scope="col" class="num">share</th></tr></thead>` +
      `<tbody>${rows || '<tr><td colspan="3">no traffic yet</td></tr>'}</tbody></table>`;
  };
}

const WIDGETS: Widget[] = [
  {
    id: "rate-now",
    title: "Traffic now (last 5 minutes)",
    async render(body) {
      const now = await api.flowRate();
      body.innerHTML = `<p class="big" data-value="${now.bps}">${rate(now.bps, "bps")}</p>` +
        `<p>${rate(now.pps, "pps")} · ${rate(now.flows_per_second, "flows/s")}</p>`;
    },
  },
  {
    id: "rate-hour",
    title: "bps and flows/s over the last hour",
    wide: true,
    async render(body) {
      const answer = await api.hourGraph();
      const line = (series: api.TimeSeries) => series.time.map((t, i) => [t * 1000, series.values[i]]);
      const chart = echarts.getInstanceByDom(body) ?? echarts.init(body, undefined, { renderer: "canvas" });
      chart.setOption({
        animation: false, // (drawn at once: a screenshot or a glance shows the whole hour)
        legend: { bottom: 0 },
        grid: { left: 60, right: 60, top: 10, bottom: 40 },
        xAxis: { type: "time" },
        yAxis: [{ type: "value", axisLabel: { formatter: (v: number) => rate(v, "bps") } },
                { type: "value", axisLabel: { formatter: (v: number) => rate(v, "flows/s") } }],
        tooltip: { trigger: "axis" },
        series: [
          { name: "bps", type: "line", showSymbol: false, areaStyle: {}, data: line(answer.bps),
            tooltip: { valueFormatter: (v: number) => rate(v, "bps") } },
          { name: "flows/s", type: "line", yAxisIndex: 1, showSymbol: false, data: line(answer.flows_per_second),
            tooltip: { valueFormatter: (v: number) => rate(v, "flows/s") } },
        ],
      });
      body.dataset.points = String(answer.bps.time.length);
    },
  },
  { id: "top-exporters", title: "Top exporters", render: topTable("ExporterName", "exporter") },
  { id: "top-as", title: "Top source AS", render: topTable("SrcAS", "AS") },
  { id: "top-countries", title: "Top source countries", render: topTable("SrcCountry", "country") },
  { id: "top-protocols", title: "Top protocols", render: topTable("Proto", "protocol") },
  { id: "top-ports", title: "Top destination ports", render: topTable("DstPort", "port") },
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
