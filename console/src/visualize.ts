// Visualize: time range, ordered dimensions, top N, unit, graph type (stacked area, lines, grid
// of small multiples, sankey), bidirectional and previous-period overlays, and a table of
// per-series average, max, 95th percentile and total. The state lives in the URL.

import { echarts, type SeriesOption } from "./charts";

import * as api from "./api";
import { filterEditor } from "./filter";
import { escapeHtml, named, percentile, quantity, rate, total } from "./format";

export interface State {
  from: string;
  to: string;
  dims: string[];
  limit: number;
  unit: string;
  graph: string;
  filter: string;
  bidirectional: boolean;
  previous: string; // "", "day" or "week"
}

const PRESETS = [["-15m", "15 minutes"], ["-1h", "1 hour"], ["-6h", "6 hours"], ["-24h", "24 hours"], ["-7d", "7 days"]];
const GRAPHS = [["stacked", "stacked area"], ["lines", "lines"], ["grid", "grid"], ["sankey", "sankey"]];
const SHIFT: Record<string, number> = { day: 86400, week: 7 * 86400 };

export function readState(query: URLSearchParams): State {
  return {
    from: query.get("from") || "-6h",
    to: query.get("to") || "now",
    dims: (query.get("dims") ?? "SrcAS").split(",").filter(Boolean),
    limit: Number(query.get("limit") || 10),
    unit: ["pps", "l2bps"].includes(query.get("unit") ?? "") ? query.get("unit")! : "bps",
    graph: GRAPHS.some(([g]) => g === query.get("graph")) ? query.get("graph")! : "stacked",
    filter: query.get("filter") ?? "",
    bidirectional: query.get("bidirectional") === "1",
    previous: query.get("previous") === "day" || query.get("previous") === "week" ? query.get("previous")! : "",
  };
}

function writeState(state: State): void {
  const query = new URLSearchParams({
    from: state.from, to: state.to, dims: state.dims.join(","), limit: String(state.limit), unit: state.unit,
    graph: state.graph, filter: state.filter,
  });
  if (state.bidirectional) query.set("bidirectional", "1");
  if (state.previous) query.set("previous", state.previous);
  history.replaceState(null, "", `#/visualize?${query.toString()}`);
}

/** The reverse direction's name of a column: Src ↔ Dst, In ↔ Out. */
export function reverseName(name: string): string {
  return name.replace(/^(Src|Dst|In|Out)/, (side) => ({ Src: "Dst", Dst: "Src", In: "Out", Out: "In" })[side]!);
}

/** The filter for the reverse direction: column names swapped, quoted values left alone. */
export function reverseFilter(filter: string): string {
  return filter.split(/('[^']*'|"[^"]*")/).map((part, i) =>
    i % 2 ? part : part.replace(/\b(Src|Dst|In|Out)(?=[A-Z])/g, (side) => ({ Src: "Dst", Dst: "Src", In: "Out", Out: "In" })[side]!),
  ).join("");
}

function absolute(value: string): number {
  if (value === "now") return Math.floor(Date.now() / 1000);
  const relative = /^-(\d+)([mhd])$/.exec(value);
  if (relative) return Math.floor(Date.now() / 1000) - Number(relative[1]) * { m: 60, h: 3600, d: 86400 }[relative[2] as "m" | "h" | "d"];
  return /^\d+$/.test(value) ? Number(value) : Math.floor(Date.parse(value) / 1000);
}

/** A value as the filter language writes it; null when it cannot (both kinds of quotes). */
export function quoted(dimension: string, value: string, numeric: Set<string>): string | null {
  if (numeric.has(dimension)) return value;
  if (!value.includes("'")) return `'${value}'`;
  return value.includes('"') ? null : `"${value}"`;
}

export async function showVisualize(page: HTMLElement, query: URLSearchParams): Promise<void> {
  const { dimensions } = await api.columns();
  const known = new Set(dimensions.map((d) => d.name));
  const state = readState(query);
  state.dims = state.dims.filter((d) => known.has(d)); // (the URL is anyone's text)
  const numeric = new Set(dimensions.filter((d) => d.kind === "int").map((d) => d.name));
  page.innerHTML = `
    <h1>Visualize</h1>
    <form class="controls" aria-label="graph settings">
      <label>Range <select name="from">${PRESETS.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}
        <option value="custom">absolute…</option></select></label>
      <label class="absolute">From <input type="datetime-local" name="absFrom"></label>
      <label class="absolute">To <input type="datetime-local" name="absTo"></label>
      <label>Dimensions <select name="dims" multiple size="4">${dimensions.map((d) =>
        `<option value="${d.name}" title="${escapeHtml(d.description)}">${d.name}</option>`).join("")}</select></label>
      <div class="chosen" aria-label="dimensions in order"></div>
      <label>Top <input type="number" name="limit" min="1" max="50"></label>
      <label>Unit <select name="unit"><option value="bps">L3 bps</option><option value="l2bps">L2 bps</option>
        <option value="pps">pps</option></select></label>
      <label>Graph <select name="graph">${GRAPHS.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select></label>
      <label><input type="checkbox" name="bidirectional"> bidirectional</label>
      <label>Previous period <select name="previous"><option value="">none</option><option value="day">a day before</option>
        <option value="week">a week before</option></select></label>
      <div class="filter-host"></div>
      <button type="submit">Apply</button>
    </form>
    <div class="graph" role="img" aria-label="traffic graph"></div>
    <div class="series-table"></div>`;
  const form = page.querySelector("form")!;
  const field = <T extends HTMLElement>(name: string) => form.elements.namedItem(name) as unknown as T;
  const preset = PRESETS.some(([v]) => v === state.from) && state.to === "now";
  field<HTMLSelectElement>("from").value = preset ? state.from : "custom";
  if (!preset) {
    field<HTMLInputElement>("absFrom").value = new Date(absolute(state.from) * 1000 - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16);
    field<HTMLInputElement>("absTo").value = new Date(absolute(state.to) * 1000 - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }
  const showAbsolute = () => page.querySelectorAll<HTMLElement>(".absolute").forEach((label) => {
    label.hidden = field<HTMLSelectElement>("from").value !== "custom";
  });
  field<HTMLSelectElement>("from").addEventListener("change", showAbsolute);
  showAbsolute();
  const chosen: string[] = [...state.dims];
  const dimsSelect = field<HTMLSelectElement>("dims");
  const chosenBox = page.querySelector<HTMLElement>(".chosen")!;
  const showChosen = () => {
    for (const option of Array.from(dimsSelect.options)) option.selected = chosen.includes(option.value);
    chosenBox.innerHTML = chosen.map((d, i) =>
      `<button type="button" data-index="${i}" aria-label="remove ${escapeHtml(d)}">${i + 1}. ${escapeHtml(d)} ×</button>`).join("");
  };
  dimsSelect.addEventListener("change", () => {
    const selected = Array.from(dimsSelect.selectedOptions).map((o) => o.value);
    for (const name of selected) if (!chosen.includes(name)) chosen.push(name);
    for (let i = chosen.length - 1; i >= 0; i--) if (!selected.includes(chosen[i])) chosen.splice(i, 1);
    showChosen();
  });
  chosenBox.addEventListener("click", (event) => {
    const index = (event.target as HTMLElement).dataset.index;
    if (index !== undefined) { chosen.splice(Number(index), 1); showChosen(); }
  });
  showChosen();
  field<HTMLInputElement>("limit").value = String(state.limit);
  field<HTMLSelectElement>("unit").value = state.unit;
  field<HTMLSelectElement>("graph").value = state.graph;
  field<HTMLInputElement>("bidirectional").checked = state.bidirectional;
  field<HTMLSelectElement>("previous").value = state.previous;
  const editor = filterEditor(page.querySelector<HTMLElement>(".filter-host")!, state.filter, () => form.requestSubmit());

  const collect = (): State => {
    const from = field<HTMLSelectElement>("from").value;
    const custom = from === "custom";
    return {
      from: custom ? String(Math.floor(Date.parse(field<HTMLInputElement>("absFrom").value) / 1000)) : from,
      to: custom ? String(Math.floor(Date.parse(field<HTMLInputElement>("absTo").value) / 1000)) : "now",
      dims: [...chosen],
      limit: Math.max(1, Math.min(50, Number(field<HTMLInputElement>("limit").value) || 10)),
      unit: field<HTMLSelectElement>("unit").value,
      graph: field<HTMLSelectElement>("graph").value,
      filter: editor.value(),
      bidirectional: field<HTMLInputElement>("bidirectional").checked,
      previous: field<HTMLSelectElement>("previous").value,
    };
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = collect();
    writeState(next);
    void draw(page, next, numeric, (text) => { editor.set(text); form.requestSubmit(); });
  });
  await draw(page, state, numeric, (text) => { editor.set(text); form.requestSubmit(); });
}

async function draw(page: HTMLElement, state: State, numeric: Set<string>, refilter: (text: string) => void): Promise<void> {
  const graph = page.querySelector<HTMLElement>(".graph")!;
  const table = page.querySelector<HTMLElement>(".series-table")!;
  graph.setAttribute("aria-busy", "true");
  const sankey = state.graph === "sankey";
  const points = sankey ? 1 : 120;
  const base = { from: state.from, to: state.to, limit: state.limit, unit: state.unit, points };
  try {
    const main = await api.flows({ ...base, dimensions: state.dims.join(","), filter: state.filter });
    const reverse = state.bidirectional
      ? await api.flows({ ...base, dimensions: state.dims.map(reverseName).join(","), filter: reverseFilter(state.filter) })
      : null;
    const shift = SHIFT[state.previous];
    const previous = shift
      ? await api.flows({ ...base, from: absolute(state.from) - shift, to: absolute(state.to) - shift, filter: state.filter })
      : null;
    echarts.getInstanceByDom(graph)?.dispose();
    graph.innerHTML = "";
    if (sankey) drawSankey(graph, main, reverse, state);
    else if (state.graph === "grid") drawGrid(graph, main, state);
    else drawLines(graph, main, reverse, previous, state, shift ?? 0);
    drawTable(table, main, reverse, state, numeric, refilter);
    graph.dataset.series = String(main.series.length);
    graph.dataset.table = main.table;
  } catch (err) {
    graph.textContent = `unavailable: ${(err as Error).message}`;
    table.innerHTML = "";
  } finally {
    graph.setAttribute("aria-busy", "false");
  }
}

/** The unit as numbers are printed: L2 and L3 bits per second are both bps. */
function shown(unit: string): string {
  return unit === "pps" ? "pps" : "bps";
}

function label(series: api.Series): string {
  return series.dimensions.length ? series.dimensions.join(" / ") : "total";
}

function drawLines(host: HTMLElement, main: api.FlowsAnswer, reverse: api.FlowsAnswer | null,
                   previous: api.FlowsAnswer | null, state: State, shift: number): void {
  const chart = echarts.init(host);
  const stacked = state.graph === "stacked";
  const series: SeriesOption[] = main.series.map((s) => ({
    name: label(s), type: "line", showSymbol: false, stack: stacked ? "forward" : undefined,
    areaStyle: stacked ? {} : undefined, data: main.time.map((t, i) => [t * 1000, s.values[i]]),
  }));
  for (const s of reverse?.series ?? []) {
    series.push({
      name: `${label(s)} (reverse)`, type: "line", showSymbol: false, stack: stacked ? "reverse" : undefined,
      areaStyle: stacked ? {} : undefined, data: reverse!.time.map((t, i) => [t * 1000, -s.values[i]]),
    });
  }
  if (previous?.series[0]) {
    series.push({
      name: `total, ${state.previous} before`, type: "line", showSymbol: false, lineStyle: { type: "dashed" },
      data: previous.time.map((t, i) => [(t + shift) * 1000, previous.series[0].values[i]]),
    });
  }
  chart.setOption({
    animation: false,
    legend: { type: "scroll", bottom: 0 },
    grid: { left: 70, right: 16, top: 16, bottom: 48 },
    tooltip: { trigger: "axis", valueFormatter: (v: number) => rate(v, shown(state.unit)) },
    xAxis: { type: "time" },
    yAxis: { type: "value", axisLabel: { formatter: (v: number) => rate(v, shown(state.unit)) } },
    series,
  });
  chart.on("click", (event) => host.dispatchEvent(new CustomEvent("pick", { detail: event.seriesName })));
}

function drawGrid(host: HTMLElement, main: api.FlowsAnswer, state: State): void {
  host.classList.add("small-multiples");
  for (const s of main.series) {
    const cell = document.createElement("div");
    cell.className = "multiple";
    cell.setAttribute("aria-label", label(s));
    host.append(cell);
    echarts.init(cell).setOption({
      animation: false,
      title: { text: label(s), textStyle: { fontSize: 12 } },
      grid: { left: 50, right: 8, top: 28, bottom: 20 },
      xAxis: { type: "time", axisLabel: { show: false } },
      yAxis: { type: "value", axisLabel: { formatter: (v: number) => rate(v, shown(state.unit)) } },
      series: [{ type: "line", showSymbol: false, areaStyle: {}, data: main.time.map((t, i) => [t * 1000, s.values[i]]) }],
    });
  }
}

/** Sankey links between consecutive dimensions, weighted by each series' average. */
export function sankeyGraph(answer: api.FlowsAnswer, names: string[]): { nodes: { name: string }[]; links: { source: string; target: string; value: number }[] } {
  const links = new Map<string, number>();
  const nodes = new Set<string>();
  for (const s of answer.series) {
    if (s.dimensions.length < 2) continue;
    for (let i = 0; i + 1 < s.dimensions.length; i++) {
      const source = `${names[i]}: ${s.dimensions[i]}`;
      const target = `${names[i + 1]}: ${s.dimensions[i + 1]}`;
      nodes.add(source).add(target);
      links.set(`${source}\u0000${target}`, (links.get(`${source}\u0000${target}`) ?? 0) + s.average);
    }
  }
  return {
    nodes: [...nodes].map((name) => ({ name })),
    links: [...links].map(([key, value]) => ({ source: key.split("\u0000")[0], target: key.split("\u0000")[1], value })),
  };
}

function drawSankey(host: HTMLElement, main: api.FlowsAnswer, reverse: api.FlowsAnswer | null, state: State): void {
  if (state.dims.length < 2) {
    host.textContent = "a sankey needs two dimensions or more";
    return;
  }
  const graph = sankeyGraph(main, state.dims);
  if (reverse) {
    const back = sankeyGraph(reverse, state.dims.map(reverseName));
    for (const node of back.nodes) if (!graph.nodes.some((n) => n.name === node.name)) graph.nodes.push(node);
    graph.links.push(...back.links);
  }
  echarts.init(host).setOption({
    animation: false,
    tooltip: { valueFormatter: (v: number) => rate(v, shown(state.unit)) },
    series: [{ type: "sankey", data: graph.nodes, links: graph.links, emphasis: { focus: "adjacency" },
               label: { fontSize: 11 } }],
  });
  host.dataset.links = String(graph.links.length);
}

function drawTable(host: HTMLElement, main: api.FlowsAnswer, reverse: api.FlowsAnswer | null, state: State,
                   numeric: Set<string>, refilter: (text: string) => void): void {
  const rows = [...main.series.map((s) => ({ s, answer: main, reversed: false })),
                ...(reverse?.series ?? []).map((s) => ({ s, answer: reverse!, reversed: true }))];
  const heads = state.dims.length ? state.dims : ["total"];
  host.innerHTML = `<table class="figures"><thead><tr>${heads.map((d) => `<th scope="col">${escapeHtml(d)}</th>`).join("")}
      <th scope="col" class="num">average</th><th scope="col" class="num">max</th><th scope="col" class="num">95th</th>
      <th scope="col" class="num">total</th></tr></thead><tbody>${rows.map(({ s, answer, reversed }, index) =>
      `<tr tabindex="0" data-index="${index}" title="add to the filter">` +
      (s.dimensions.length ? s.dimensions : ["total"]).map((d) =>
        `<td>${escapeHtml(named(d, answer.names))}${reversed ? " ↩" : ""}</td>`).join("") +
      `<td class="num" data-raw="${s.average}">${rate(s.average, shown(state.unit))}</td><td class="num">${rate(s.max, shown(state.unit))}</td>` +
      `<td class="num">${rate(percentile(s.values, 95), shown(state.unit))}</td>` +
      `<td class="num">${quantity(total(s.values, answer.time, answer.step, Math.min(answer.to, Date.now() / 1000)), state.unit === "pps" ? "p" : "b")}</td></tr>`).join("")}
      </tbody></table>`;
  const pick = (index: number) => {
    const { s, reversed } = rows[index];
    if (!s.dimensions.length || s.dimensions[0] === "Other") return;
    const names = reversed ? state.dims.map(reverseName) : state.dims;
    const values = s.dimensions.map((value, i) => quoted(names[i], value, numeric));
    if (values.some((v) => v === null)) return;
    const terms = values.map((value, i) => `${names[i]} = ${value}`);
    refilter([state.filter.trim() && `(${state.filter.trim()})`, ...terms].filter(Boolean).join(" AND "));
  };
  host.querySelectorAll<HTMLElement>("tbody tr").forEach((row) => {
    row.addEventListener("click", () => pick(Number(row.dataset.index)));
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") pick(Number(row.dataset.index)); });
  });
  host.closest("main")?.querySelector(".graph")?.addEventListener("pick", (event) => {
    const name = (event as CustomEvent<string>).detail;
    const index = rows.findIndex(({ s, reversed }) => `${label(s)}${reversed ? " (reverse)" : ""}` === name);
    if (index >= 0) pick(index);
  }, { once: true });
}
