// Numbers and times as people read them, and the figures of the table under a graph.

const PREFIXES = ["", "k", "M", "G", "T", "P"];

export function rate(value: number, unit: string): string {
  let scaled = Math.abs(value);
  let index = 0;
  while (scaled >= 1000 && index < PREFIXES.length - 1) {
    scaled /= 1000;
    index += 1;
  }
  const sign = value < 0 ? "-" : "";
  return `${sign}${scaled.toFixed(scaled >= 100 || index === 0 ? 0 : 1)} ${PREFIXES[index]}${unit}`;
}

export function quantity(value: number, unit: string): string {
  return rate(value, unit);
}

/** A rate in a graph unit as people read it (bps, pps, flows/s, or a share of interface speed). */
export function figure(value: number, unit: string): string {
  if (unit.endsWith("pct")) return `${value.toFixed(Math.abs(value) < 10 ? 2 : 1)} %`;
  return rate(value, { bps: "bps", l2bps: "bps", pps: "pps", flows: "flows/s" }[unit] ?? unit);
}

export function time(seconds: number): string {
  return new Date(seconds * 1000).toLocaleString();
}

/** A dimension's value with the AS name beside an AS number the answer named. */
export function named(value: string, names: Record<string, string> | undefined): string {
  const name = names?.[value];
  return name ? `${value} ${name}` : value;
}

export function escapeHtml(text: unknown): string {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}
