// The filter editor: CodeMirror 6 with the filter language highlighted, completion from
// /api/v0/filter/complete (columns, operators, values from the store) and live validation from
// /api/v0/filter/validate (the error marked at its position).

import { autocompletion, CompletionContext, CompletionResult } from "@codemirror/autocomplete";
import { HighlightStyle, StreamLanguage, syntaxHighlighting } from "@codemirror/language";
import { Diagnostic, linter, lintGutter } from "@codemirror/lint";
import { EditorState } from "@codemirror/state";
import { EditorView, keymap, placeholder } from "@codemirror/view";
import { tags } from "@lezer/highlight";

import * as api from "./api";

const filterLanguage = StreamLanguage.define({
  token(stream) {
    if (stream.eatSpace()) return null;
    if (stream.match(/'[^']*'?/) || stream.match(/"[^"]*"?/)) return "string";
    if (stream.match(/[0-9]+\b/)) return "number";
    if (stream.match(/(and|or|not|in|like|ilike)\b/i)) return "keyword";
    if (stream.match(/!=|<>|<=|>=|=|<|>/)) return "operator";
    if (stream.match(/[A-Za-z][A-Za-z0-9]*/)) return "variableName";
    stream.next();
    return null;
  },
});

const highlight = HighlightStyle.define([
  { tag: tags.keyword, class: "tok-keyword" },
  { tag: tags.string, class: "tok-string" },
  { tag: tags.number, class: "tok-number" },
  { tag: tags.operator, class: "tok-operator" },
  { tag: tags.variableName, class: "tok-column" },
]);

async function completions(context: CompletionContext): Promise<CompletionResult | null> {
  const text = context.state.doc.toString();
  try {
    const answer = await api.complete(text, context.pos);
    if (!answer.completions.length && !context.explicit) return null;
    return {
      from: answer.from,
      options: answer.completions.map((c) => ({ label: c.label, type: c.kind, detail: c.detail || undefined })),
      validFor: /^['"]?[\w./:-]*$/,
    };
  } catch {
    return null;
  }
}

async function diagnostics(view: EditorView): Promise<Diagnostic[]> {
  const text = view.state.doc.toString();
  const result = await api.validate(text).catch(() => null);
  const status = view.dom.closest(".filter")?.querySelector(".filter-status");
  if (!result || result.valid) {
    if (status) status.textContent = result ? "" : "validation unavailable";
    return [];
  }
  const from = Math.min(result.position ?? 0, text.length);
  if (status) status.textContent = `${result.message} (line ${result.line}, column ${result.column})`;
  return [{ from, to: Math.min(text.length, from + 1) || from, severity: "error", message: result.message ?? "invalid" }];
}

export interface FilterEditor {
  value(): string;
  set(text: string): void;
  view: EditorView;
}

/** An editor in `host`; `onApply` is called with the text on Enter (and by the caller's button). */
export function filterEditor(host: HTMLElement, initial: string, onApply: (text: string) => void): FilterEditor {
  host.classList.add("filter");
  const wrapper = document.createElement("div");
  const status = document.createElement("div");
  status.className = "filter-status";
  status.setAttribute("role", "status");
  status.setAttribute("aria-live", "polite");
  host.append(wrapper, status);
  const view = new EditorView({
    parent: wrapper,
    state: EditorState.create({
      doc: initial,
      extensions: [
        filterLanguage,
        syntaxHighlighting(highlight),
        autocompletion({ override: [completions], activateOnTyping: true }),
        linter(diagnostics, { delay: 300 }),
        lintGutter(),
        placeholder("filter, e.g. InIfBoundary = 'external' AND Proto = 6"),
        keymap.of([{ key: "Enter", run: (v) => (onApply(v.state.doc.toString()), true) }]),
        EditorView.contentAttributes.of({ "aria-label": "filter", "data-testid": "filter-input" }),
        EditorState.transactionFilter.of((tr) => (tr.newDoc.lines > 1 ? [] : tr)), // one line
      ],
    }),
  });
  return {
    view,
    value: () => view.state.doc.toString(),
    set: (text: string) => view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } }),
  };
}
