// The console's shell: hash routes (#/home, #/visualize?...), the theme, the API token prompt.

import { ApiError, setToken } from "./api";
import { showHome } from "./home";
import { showVisualize } from "./visualize";

const THEME_KEY = "waxflow-theme";

function applyTheme(theme: string): void {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem(THEME_KEY, theme);
}

function route(): void {
  const page = document.getElementById("page")!;
  const [path, query] = (location.hash.slice(1) || "/home").split("?");
  const name = path === "/visualize" ? "visualize" : "home";
  document.querySelectorAll<HTMLAnchorElement>("nav a").forEach((a) => {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  const shown = name === "visualize" ? showVisualize(page, new URLSearchParams(query ?? "")) : Promise.resolve(showHome(page));
  shown.catch((err: unknown) => {
    if (err instanceof ApiError && err.status === 401) askToken(page);
    else page.textContent = `unavailable: ${(err as Error).message}`;
  });
}

function askToken(page: HTMLElement): void {
  page.innerHTML = `<form class="token"><label>API token <input type="password" name="token" autocomplete="off"></label>
    <button type="submit">Use</button></form>`;
  page.querySelector("form")!.addEventListener("submit", (event) => {
    event.preventDefault();
    setToken((page.querySelector("input") as HTMLInputElement).value);
    route();
  });
}

applyTheme(localStorage.getItem(THEME_KEY) ?? (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
document.getElementById("theme")!.addEventListener("click", () =>
  applyTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"));
window.addEventListener("hashchange", route);
window.addEventListener("waxflow-unauthorized", () => askToken(document.getElementById("page")!));
route();
