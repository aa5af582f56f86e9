// The console talks only to the documented /api/v0 endpoints of the outlet that serves it.

export interface Series {
  dimensions: string[];
  values: number[];
  average: number;
  max: number;
  p95: number;
  total: number; // what the series carried over the window: bits, packets, flows (or %·s)
}

export interface FlowsAnswer {
  table: string;
  step: number;
  unit: string;
  from: number;
  to: number;
  dimensions: string[];
  time: number[];
  series: Series[];
  names: Record<string, string>; // AS number → name, for the AS values of the series
}

export interface Interface {
  ifindex: number;
  name: string;
  description: string;
  speed: number;
}

export interface Exporter {
  address: string;
  name: string;
  interfaces: Interface[];
}

export interface Completion {
  label: string;
  kind: string;
  detail: string;
}

export interface Completions {
  context: string;
  column: string | null;
  prefix: string;
  from: number;
  completions: Completion[];
}

export interface Validation {
  valid: boolean;
  columns?: string[];
  reason?: string;
  message?: string;
  position?: number;
  line?: number;
  column?: number;
}

export interface ColumnInfo {
  name: string;
  description: string;
  aggregated: boolean;
  kind: "int" | "string" | "enum" | "ip";
}

export class ApiError extends Error {
  constructor(readonly status: number, readonly reason: string, message: string) {
    super(message);
  }
}

const TOKEN_KEY = "waxflow-token";

function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value: string): void {
  sessionStorage.setItem(TOKEN_KEY, value);
}

type Params = Record<string, string | number | undefined>;

async function call<T>(method: string, path: string, params: Params = {}, json?: unknown): Promise<T> {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== "") query.set(key, String(value));
  }
  const headers: Record<string, string> = {};
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (json !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(`${path}${query.size ? "?" + query.toString() : ""}`, {
    method, headers, body: json === undefined ? undefined : JSON.stringify(json),
  });
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    throw new ApiError(answer.status, body.reason ?? "error", body.error ?? answer.statusText);
  }
  return body as T;
}

export function get<T>(path: string, params: Params = {}): Promise<T> {
  return call<T>("GET", path, params);
}

export interface FlowsParams {
  from: string | number;
  to?: string | number;
  dimensions?: string;
  limit?: number;
  filter?: string;
  unit?: string;
  points?: number;
}

export function flows(params: FlowsParams): Promise<FlowsAnswer> {
  return get<FlowsAnswer>("/api/v0/flows", { ...params });
}

export interface SankeyLink {
  source: string;
  target: string;
  value: number;
  forward: number;
  reverse: number;
}

export interface GraphAnswer extends FlowsAnswer {
  type: "series" | "sankey";
  reverse: FlowsAnswer | null; // its dimensions are the swapped columns (SrcAS → DstAS, ...)
  previous: (FlowsAnswer & { shift: number }) | null; // times already moved onto the main ones
  sankey?: { nodes: { name: string }[]; links: SankeyLink[] };
}

export interface GraphParams extends FlowsParams {
  type?: "series" | "sankey";
  bidirectional?: 1;
  previous?: string;
}

export function graph(params: GraphParams): Promise<GraphAnswer> {
  return get<GraphAnswer>("/api/v0/graph", { ...params });
}

export async function exporters(): Promise<Exporter[]> {
  return (await get<{ exporters: Exporter[] }>("/api/v0/exporters")).exporters;
}

export function columns(): Promise<{ dimensions: ColumnInfo[] }> {
  return get("/api/v0/columns");
}

export function validate(filter: string): Promise<Validation> {
  return get<Validation>("/api/v0/filter/validate", { filter });
}

export function complete(filter: string, cursor: number): Promise<Completions> {
  return get<Completions>("/api/v0/filter/complete", { filter, cursor });
}

// -- the home page's widgets

export interface FlowRate {
  from: number;
  to: number;
  bps: number;
  pps: number;
  flows_per_second: number;
}

export interface TimeSeries {
  time: number[];
  step: number;
  values: number[];
}

export interface Top {
  dimension: string;
  unit: string;
  top: { value: string; name: string; rate: number; percent: number }[];
  other: number;
  total: number;
}

export const flowRate = () => get<FlowRate>("/api/v0/widgets/flow-rate");
export const hourGraph = () => get<{ bps: TimeSeries; flows_per_second: TimeSeries }>("/api/v0/widgets/graph");
export const top = (dimension: string, limit = 5) => get<Top>(`/api/v0/widgets/top/${encodeURIComponent(dimension)}`, { limit });
export const lastFlow = async () => (await get<{ flow: Record<string, unknown> | null }>("/api/v0/widgets/last-flow")).flow;

// -- saved filters (the API's only write: one row in the saved_filters table)

export interface SavedFilter {
  name: string;
  filter: string;
  description: string;
  updated: string;
}

export const savedFilters = () => get<{ filters: SavedFilter[]; writable: boolean }>("/api/v0/filters");
export const savedFilter = (name: string) => get<SavedFilter>(`/api/v0/filters/${encodeURIComponent(name)}`);
export const saveFilter = (name: string, filter: string, description = "") =>
  call<{ saved: string }>("POST", "/api/v0/filters", {}, { name, filter, description });
export const deleteFilter = (name: string) => call<{ deleted: string }>("DELETE", `/api/v0/filters/${encodeURIComponent(name)}`);
