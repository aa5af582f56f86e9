// Visualize: time range, ordered dimensions, top N, unit, graph type (stacked area, lines, grid
// of small multiples, sankey), bidirectional and previous-period overlays, and a table of
// per-series average, max, 95th percentile and total. The state lives in the URL.

import { echarts, type SeriesOption } from "./charts";

import * as api from "./api";
import { filterEditor } from "./filter";
import { escapeHtml, figure, named, quantity } from "./format";

export interface State {
  from: string;
  to: string;
  dims: string[];
  limit: number;
  unit: string;
  graph: string;
  filter: string;
  saved: string; // a saved filter's name: loaded into the filter when the page opens
  bidirectional: boolean;
  previous: string; // "", "day" or "week"
}

const PRESETS = [["-15m", "15 minutes"], ["-1h", "1 hour"], ["-6h", "6 hours"], ["-24h", "24 hours"], ["-7d", "7 days"]];
const GRAPHS = [["stacked", "stacked area"], ["lines", "lines"], ["grid", "grid"], ["sankey", "sankey"]];
const UNITS = [["bps", "L3 bps"], ["l2bps", "L2 bps"], ["pps", "pps"], ["flows", "flows/s"],
               ["inl2pct", "% of in interface speed"], ["outl2pct", "% of out interface speed"]];

export function readState(query: URLSearchParams): State {
  return {
    from: query.get("from") || "-6h",
    to: query.get("to") || "now",
    dims: (query.get("dims") ?? "SrcAS").split(",").filter(Boolean),
    limit: Number(query.get("limit") || 10),
    unit: UNITS.some(([u]) => u === query.get("unit")) ? query.get("unit")! : "bps",
    graph: GRAPHS.some(([g]) => g === query.get("graph")) ? query.get("graph")! : "stacked",
    filter: query.get("filter") ?? "",
    saved: query.get("saved") ?? "",
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
  if (state.saved) query.set("saved", state.saved); // (shareable: the link opens the saved filter)
  history.replaceState(null, "", `#/visualize?${query.toString()}`);
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
      <label>Unit <select name="unit">${UNITS.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select></label>
      <label>Graph <select name="graph">${GRAPHS.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select></label>
      <label><input type="checkbox" name="bidirectional"> bidirectional</label>
      <label>Previous period <select name="previous"><option value="">none</option><option value="day">a day before</option>
        <option value="week">a week before</option></select></label>
      <div class="filter-host"></div>
      <div class="saved" role="group" aria-label="saved filters">
        <label>Saved filters <select name="saved"><option value="">—</option></select></label>
        <button type="button" name="save">Save filter as…</button>
        <button type="button" name="forget">Delete saved filter</button>
        <span class="saved-status" role="status"></span>
      </div>
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
  if (state.saved) {
    try {
      state.filter = (await api.savedFilter(state.saved)).filter;
    } catch (err) {
      state.saved = ""; // (a name nobody saved, or one deleted since: the URL's filter stays)
    }
  }
  const editor = filterEditor(page.querySelector<HTMLElement>(".filter-host")!, state.filter, () => form.requestSubmit());
  savedFilters(form, editor, state.saved);

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
      saved: chosenSaved(form, editor.value()),
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

type Editor = ReturnType<typeof filterEditor>;

/** The saved filter picked, while the editor still holds its text (else none: it was edited). */
function chosenSaved(form: HTMLFormElement, text: string): string {
  const select = form.elements.namedItem("saved") as HTMLSelectElement;
  const option = select.selectedOptions[0];
  return option?.value && option.dataset.filter === text.trim() ? option.value : "";
}

/** The saved filters' picker: choose one to load it, save the editor's filter under a name,
 * delete the one chosen. The list comes from the store each time it changes. */
function savedFilters(form: HTMLFormElement, editor: Editor, selected: string): void {
  const select = form.elements.namedItem("saved") as HTMLSelectElement;
  const status = form.querySelector<HTMLElement>(".saved-status")!;
  const buttons = ["save", "forget"].map((name) => form.elements.namedItem(name) as HTMLButtonElement);
  const load = async (pick: string) => {
    const { filters, writable } = await api.savedFilters();
    select.innerHTML = `<option value="">—</option>` + filters.map((f) =>
      `<option value="${escapeHtml(f.name)}" data-filter="${escapeHtml(f.filter)}" title="${escapeHtml(f.description || f.filter)}">` +
      `${escapeHtml(f.name)}</option>`).join("");
    select.value = filters.some((f) => f.name === pick) ? pick : "";
    for (const button of buttons) button.disabled = !writable;
    if (!writable) status.textContent = "saving is turned off on this server";
  };
  const report = (text: string) => { status.textContent = text; };
  select.addEventListener("change", () => {
    const option = select.selectedOptions[0];
    if (option?.value) { editor.set(option.dataset.filter ?? ""); form.requestSubmit(); }
  });
  buttons[0].addEventListener("click", async () => {
    const name = window.prompt("Save the filter as (letters, digits, spaces, . _ -):", select.value)?.trim();
    if (!name) return;
    try {
      await api.saveFilter(name, editor.value());
      await load(name);
      report(`saved as ${name}`);
      form.requestSubmit();
    } catch (err) {
      report(`not saved: ${(err as Error).message}`);
    }
  });
  buttons[1].addEventListener("click", async () => {
    if (!select.value) return;
    try {
      await api.deleteFilter(select.value);
      report(`deleted ${select.value}`);
      await load("");
    } catch (err) {
      report(`not deleted: ${(err as Error).message}`);
    }
  });
  load(selected).catch((err: Error) => report(`saved filters unavailable: ${err.message}`));
}

async function draw(page: HTMLElement, state: State, numeric: Set<string>, refilter: (text: string) => void): Promise<void> {
  const graph = page.querySelector<HTMLElement>(".graph")!;
  const table = page.querySelector<HTMLElement>(".series-table")!;
  graph.setAttribute("aria-busy", "true");
  const sankey = state.graph === "sankey";
  try {
    const answer = await api.graph({
      from: state.from, to: state.to, limit: state.limit, unit: state.unit, dimensions: state.dims.join(","),
      filter: state.filter, type: sankey ? "sankey" : "series", points: sankey ? undefined : 120,
      bidirectional: state.bidirectional ? 1 : undefined, previous: state.previous || undefined,
    });
    for (const element of [graph, ...graph.querySelectorAll<HTMLElement>(".multiple")]) echarts.getInstanceByDom(element)?.dispose();
    graph.innerHTML = "";
    delete graph.dataset.drawn;
    graph.dataset.pending = "0";
    graph.classList.remove("small-multiples");
    if (sankey) drawSankey(graph, answer, state);
    else if (state.graph === "grid") drawGrid(graph, answer, state);
    else drawLines(graph, answer, state);
    drawTable(table, answer, state, numeric, refilter);
    graph.dataset.series = String(answer.series.length);
    graph.dataset.table = answer.table;
  } catch (err) {
    graph.textContent = `unavailable: ${(err as Error).message}`;
    table.innerHTML = "";
  } finally {
    graph.setAttribute("aria-busy", "false");
  }
}

/** A series' name in legends and tables: its values, AS numbers with their names. */
function label(series: api.Series, names: Record<string, string>): string {
  return series.dimensions.length ? series.dimensions.map((d) => named(d, names)).join(" / ") : "total";
}

/** A chart in `element` that marks its .graph drawn once every chart in it has rendered (the
 * handler goes on before the first setOption: ECharts may render within it). */
function chart(element: HTMLElement) {
  const instance = echarts.init(element);
  const graph = element.closest<HTMLElement>(".graph")!;
  graph.dataset.pending = String(Number(graph.dataset.pending ?? 0) + 1);
  let counted = false;
  instance.on("finished", () => {
    if (counted) return;
    counted = true;
    graph.dataset.pending = String(Number(graph.dataset.pending) - 1);
    if (graph.dataset.pending === "0") graph.dataset.drawn = "true";
  });
  return instance;
}

function axis(unit: string) {
  return { type: "value" as const, axisLabel: { formatter: (v: number) => figure(v, unit) } };
}

function drawLines(host: HTMLElement, answer: api.GraphAnswer, state: State): void {
  const lines = chart(host);
  const stacked = state.graph === "stacked";
  const line = (a: api.FlowsAnswer, s: api.Series, sign: number) => a.time.map((t, i) => [t * 1000, sign * s.values[i]]);
  const series: SeriesOption[] = answer.series.map((s) => ({
    name: label(s, answer.names), type: "line", showSymbol: false, stack: stacked ? "forward" : undefined,
    areaStyle: stacked ? {} : undefined, data: line(answer, s, 1),
  }));
  const reverse = answer.reverse;
  for (const s of reverse?.series ?? []) { // drawn below the axis: the other direction
    series.push({
      name: `${label(s, reverse!.names)} (reverse)`, type: "line", showSymbol: false, stack: stacked ? "reverse" : undefined,
      areaStyle: stacked ? {} : undefined, data: line(reverse!, s, -1),
    });
  }
  const previous = answer.previous;
  if (previous?.series[0]) {
    series.push({
      name: `total, ${state.previous} before`, type: "line", showSymbol: false, lineStyle: { type: "dashed" },
      data: line(previous, previous.series[0], 1),
    });
  }
  lines.setOption({
    animation: false,
    legend: { type: "scroll", bottom: 0 },
    grid: { left: 80, right: 16, top: 16, bottom: 48 },
    tooltip: { trigger: "axis", valueFormatter: (v: number) => figure(v, state.unit) },
    xAxis: { type: "time" },
    yAxis: axis(state.unit),
    series,
  });
  lines.on("click", (event) => host.dispatchEvent(new CustomEvent("pick", { detail: event.seriesName })));
}

function drawGrid(host: HTMLElement, answer: api.GraphAnswer, state: State): void {
  host.classList.add("small-multiples");
  for (const s of answer.series) {
    const cell = document.createElement("div");
    cell.className = "multiple";
    cell.setAttribute("aria-label", label(s, answer.names));
    host.append(cell);
    chart(cell).setOption({
      animation: false,
      title: { text: label(s, answer.names), textStyle: { fontSize: 12 } },
      grid: { left: 60, right: 8, top: 28, bottom: 20 },
      xAxis: { type: "time", axisLabel: { show: false } },
      yAxis: axis(state.unit),
      series: [{ type: "line", showSymbol: false, areaStyle: {}, data: answer.time.map((t, i) => [t * 1000, s.values[i]]) }],
    });
  }
}

function drawSankey(host: HTMLElement, answer: api.GraphAnswer, state: State): void {
  const graph = answer.sankey!;
  const name = (node: string) => { // "SrcAS: 2906" → "SrcAS: 2906 Netflix"
    const [dimension, value] = [node.slice(0, node.indexOf(": ")), node.slice(node.indexOf(": ") + 2)];
    return `${dimension}: ${named(value, answer.names)}`;
  };
  chart(host).setOption({
    animation: false,
    tooltip: {
      formatter: (p: { dataType: string; data: api.SankeyLink & { name?: string }; value: number }) =>
        p.dataType === "edge" && state.bidirectional
          ? `${escapeHtml(name(p.data.source))} → ${escapeHtml(name(p.data.target))}<br>` +
            `${figure(p.data.forward, state.unit)} forward, ${figure(p.data.reverse, state.unit)} back`
          : escapeHtml(p.data.name ? name(p.data.name) : `${name(p.data.source)} → ${name(p.data.target)}`) +
            `<br>${figure(p.value, state.unit)}`,
    },
    series: [{ type: "sankey", data: graph.nodes, links: graph.links, emphasis: { focus: "adjacency" },
               label: { fontSize: 11, formatter: (p: { name: string }) => name(p.name) } }],
  });
  host.dataset.links = String(graph.links.length);
}

function drawTable(host: HTMLElement, answer: api.GraphAnswer, state: State,
                   numeric: Set<string>, refilter: (text: string) => void): void {
  const reverse = answer.reverse;
  const rows = [...answer.series.map((s) => ({ s, from: answer as api.FlowsAnswer })),
                ...(reverse?.series ?? []).map((s) => ({ s, from: reverse! }))];
  const heads = state.dims.length ? state.dims : ["total"];
  const unitTotal = TOTALS[state.unit];
  host.innerHTML = `<table class="figures"><thead><tr>${heads.map((d) => `<th scope="col">${escapeHtml(d)}</th>`).join("")}
      <th scope="col" class="num">average</th><th scope="col" class="num">max</th><th scope="col" class="num">95th</th>
      <th scope="col" class="num">total</th></tr></thead><tbody>${rows.map(({ s, from }, index) =>
      `<tr tabindex="0" data-index="${index}" data-key="${escapeHtml(s.dimensions.join("/"))}" title="add to the filter">` +
      (s.dimensions.length ? s.dimensions : ["total"]).map((d) =>
        `<td>${escapeHtml(named(d, from.names))}${from === reverse ? " ↩" : ""}</td>`).join("") +
      `<td class="num" data-figure="average" data-raw="${s.average}">${figure(s.average, state.unit)}</td>` +
      `<td class="num" data-figure="max" data-raw="${s.max}">${figure(s.max, state.unit)}</td>` +
      `<td class="num" data-figure="p95" data-raw="${s.p95}">${figure(s.p95, state.unit)}</td>` +
      `<td class="num" data-figure="total" data-raw="${s.total}">${unitTotal ? quantity(s.total, unitTotal) : ""}</td></tr>`).join("")}
      </tbody></table>`;
  const pick = (index: number) => {
    const { s, from } = rows[index];
    if (!s.dimensions.length || s.dimensions[0] === "Other") return;
    const values = s.dimensions.map((value, i) => quoted(from.dimensions[i], value, numeric));
    if (values.some((v) => v === null)) return;
    const terms = values.map((value, i) => `${from.dimensions[i]} = ${value}`);
    refilter([state.filter.trim() && `(${state.filter.trim()})`, ...terms].filter(Boolean).join(" AND "));
  };
  host.querySelectorAll<HTMLElement>("tbody tr").forEach((row) => {
    row.addEventListener("click", () => pick(Number(row.dataset.index)));
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") pick(Number(row.dataset.index)); });
  });
  host.closest("main")?.querySelector(".graph")?.addEventListener("pick", (event) => {
    const name = (event as CustomEvent<string>).detail;
    const index = rows.findIndex(({ s, from }) => `${label(s, from.names)}${from === reverse ? " (reverse)" : ""}` === name);
    if (index >= 0) pick(index);
  }, { once: true });
}

/** What a series' total is counted in, per unit (none for the interface-speed shares). */
const TOTALS: Record<string, string> = { bps: "b", l2bps: "b", pps: "p", flows: " flows" };
