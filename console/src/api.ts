// The console talks only to the documented /api/v0 endpoints of the outlet that serves it.

export interface Series {
  dimensions: string[];
  values: number[];
  average: number;
  max: number;
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

export async function get<T>(path: string, params: Record<string, string | number | undefined> = {}): Promise<T> {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== "") query.set(key, String(value));
  }
  const headers: Record<string, string> = {};
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const answer = await fetch(`${path}${query.size ? "?" + query.toString() : ""}`, { headers });
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    throw new ApiError(answer.status, body.reason ?? "error", body.error ?? answer.statusText);
  }
  return body as T;
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

export async function lastFlow(): Promise<Record<string, unknown> | null> {
  const answer = await get<{ columns: string[]; rows: unknown[][] }>("/api/v0/query", {
    sql: "SELECT * FROM flows ORDER BY TimeReceived DESC LIMIT 1",
  });
  if (!answer.rows.length) return null;
  return Object.fromEntries(answer.columns.map((name, i) => [name, answer.rows[0][i]]));
}
