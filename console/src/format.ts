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
  return rate(value, unit.replace(/ps$/, ""));
}

export function time(seconds: number): string {
  return new Date(seconds * 1000).toLocaleString();
}

/** The p-th percentile (0-100) of values, by linear interpolation between closest ranks. */
export function percentile(values: number[], p: number): number {
  if (!values.length) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (sorted.length - 1);
  const low = Math.floor(rank);
  const high = Math.ceil(rank);
  return sorted[low] + (sorted[high] - sorted[low]) * (rank - low);
}

/** Σ rate × the bucket's seconds inside the window: what the series carried in total. */
export function total(values: number[], times: number[], step: number, end: number): number {
  let sum = 0;
  values.forEach((value, i) => {
    const next = i + 1 < times.length ? times[i + 1] : Math.min(times[i] + step, end);
    sum += value * Math.max(0, next - times[i]);
  });
  return sum;
}

/** A dimension's value with the AS name beside an AS number the answer named. */
export function named(value: string, names: Record<string, string> | undefined): string {
  const name = names?.[value];
  return name ? `${value} ${name}` : value;
}

export function escapeHtml(text: unknown): string {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}
