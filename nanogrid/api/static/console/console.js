// NanoGrid's web console: a client of the REST API, like the CLI. Every value from the API is
// put on the page as text (textContent, never markup), the key lives in this tab's session
// storage and travels only in the Authorization header, and every request goes to this origin.
"use strict";

const KEY_STORAGE = "nanogrid.key";
const STATUSES = ["PENDING", "PROCESSING", "SUCCESS", "FAILED"];
const TERMINAL = new Set(["SUCCESS", "FAILED"]);
const STARTER = "def handler(event, context):\n    name = event.get(\"name\", \"world\")\n" +
  "    print(f\"saying hello to {name}\")\n    return {\"greeting\": f\"Hello, {name}!\"}\n";

const state = { open: null, notice: null, leaving: [] };

// -- the page's building blocks -------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function link(hash, ...children) {
  return el("a", { href: hash }, ...children);
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
  return main;
}

function problem(error) {
  return el("p", { class: "error", role: "alert" }, error.message || String(error));
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function statusBadge(status) {
  return el("span", { class: `status status-${String(status).toLowerCase()}` }, status);
}

function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((header) => el("th", {}, header)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((cell) => el("td", {}, cell))))));
}

function facts(pairs) {
  return el("dl", { class: "facts" },
    pairs.filter(([, value]) => value !== undefined).map(([name, value]) => [el("dt", {}, name),
      el("dd", {}, value === null || value === "" ? "–" : value)]));
}

function megabytes(bytes) {
  return bytes === null || bytes === undefined ? null : `${(bytes / 1048576).toFixed(1)} MiB`;
}

// -- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}, key = sessionStorage.getItem(KEY_STORAGE)) {
  return { Accept: "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}), ...extra };
}

async function refusal(response) {
  let message = `the API answered ${response.status}`;
  let code = "error";
  try {
    const body = await response.json();
    if (body && body.error) ({ message, code } = body.error);
  } catch (ignored) { /* not JSON: keep the status */ }
  return new ApiError(response.status, code, message);
}

async function api(path, { method = "GET", body, form, key } = {}) {
  const options = { method, headers: headers({}, key === undefined ? sessionStorage.getItem(KEY_STORAGE) : key),
    credentials: "omit", cache: "no-store" };
  if (form) options.body = form;
  else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(0, "unreachable", `the API did not answer (${error.message})`);
  }
  if (!response.ok) {
    const error = await refusal(response);
    if (response.status === 401 && key === undefined) signedOut(error.message);
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

function signedOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  state.notice = message;
  location.hash = "#/signin";
}

// A run's events (Server-Sent Events) read with fetch, which can send the key in a header (an
// EventSource cannot); after a dropped connection it goes on from the last event it saw.
async function follow(jobId, onEvent, signal) {
  let lastId = null;
  for (let attempt = 0; attempt < 30; attempt += 1) {
    const extra = { Accept: "text/event-stream", ...(lastId ? { "Last-Event-ID": lastId } : {}) };
    let response;
    try {
      response = await fetch(`/jobs/${encodeURIComponent(jobId)}/events`,
        { headers: headers(extra), credentials: "omit", cache: "no-store", signal });
    } catch (error) {
      if (signal && signal.aborted) return null;
      await new Promise((resolve) => setTimeout(resolve, 1000));
      continue;
    }
    if (!response.ok) throw await refusal(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (signal && signal.aborted) return null;
        break; // the connection dropped: reconnect from lastId
      }
      if (chunk.done) break;
      buffer += chunk.value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!event) continue;
        lastId = event.id || lastId;
        onEvent(event.kind, event.data);
        if (event.kind === "end") return event.data;
      }
    }
  }
  throw new ApiError(0, "stream", "the run's event stream kept closing; open the job to see how it ended");
}

function parseEvent(block) {
  const event = { id: null, kind: "message", data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = value;
    else if (field === "event") event.kind = value;
    else if (field === "data") event.data.push(value);
  }
  if (!event.data.length) return null;
  try {
    event.data = JSON.parse(event.data.join("\n"));
  } catch (ignored) {
    return null;
  }
  return event;
}

// -- a live run -----------------------------------------------------------------------------

// The output of a run as it arrives, then how it ended; used by the run panel and the job page.
function liveRun(jobId, onEnd) {
  const status = el("p", { class: "live-status" }, statusBadge("PENDING"), " waiting for a worker…");
  const stdout = el("pre", { class: "output", "data-stream": "stdout" });
  const stderr = el("pre", { class: "output stderr", "data-stream": "stderr" });
  const items = el("pre", { class: "output", "data-stream": "items" });
  const panel = el("section", { class: "live", "data-job": jobId },
    status, el("h3", {}, "Output"), stdout, el("h3", {}, "Errors"), stderr);
  const controller = new AbortController();
  state.leaving.push(() => controller.abort());
  follow(jobId, (kind, data) => {
    if (kind === "stdout") stdout.append(data.text);
    else if (kind === "stderr") stderr.append(data.text);
    else if (kind === "status") {
      const text = data.status === "PROCESSING" ? " running" : "";
      status.replaceChildren(statusBadge(data.status || "PENDING"), text,
        data.attempt && data.attempt > 1 ? ` (attempt ${data.attempt})` : "");
    } else if (kind === "result" && "item" in data) {
      if (!items.isConnected) panel.append(el("h3", {}, "Yielded items"), items);
      items.append(`${JSON.stringify(data.item)}\n`);
    }
  }, controller.signal).then((job) => {
    if (!job) return;
    status.replaceChildren(statusBadge(job.status), " ended");
    panel.append(outcome(job));
    if (onEnd) onEnd(job);
  }, (error) => panel.append(problem(error)));
  return panel;
}

function outcome(job) {
  return el("section", { class: "outcome" },
    job.error ? el("p", { class: "error" }, `${job.error.type}: ${job.error.message}`) : null,
    el("h3", {}, "Result"), el("pre", { class: "output", "data-field": "result" }, json(job.result)),
    facts([["duration", job.duration_ms === null ? null : `${job.duration_ms} ms`],
      ["peak memory", megabytes(job.peak_memory_bytes)],
      ["CPU time", job.cpu_time_ms === null || job.cpu_time_ms === undefined ? null : `${job.cpu_time_ms} ms`],
      ["job", link(`#/jobs/${encodeURIComponent(job.job_id)}`, job.job_id)]]));
}

// -- pages ----------------------------------------------------------------------------------

async function signInPage() {
  if (state.open) {
    show(el("h1", {}, "Sign in"), el("p", {}, "This installation is open: it has no API keys, so no key is " +
      "needed, and anyone who can reach it can use it. "), link("#/functions", "Go to the functions"));
    return;
  }
  const input = el("input", { id: "api-key", type: "password", autocomplete: "off", required: true,
    placeholder: "ng_…", size: 48 });
  const message = el("div", {}, state.notice ? problem(new Error(state.notice)) : null);
  state.notice = null;
  const form = el("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    try {
      await api("/limits", { key });
      sessionStorage.setItem(KEY_STORAGE, key);
      location.hash = "#/functions";
    } catch (error) {
      message.replaceChildren(problem(error.status === 401
        ? new Error(`The API refused this key: ${error.message}.`) : error));
    }
  } }, el("label", { for: "api-key" }, "API key"), input, el("button", { type: "submit" }, "Sign in"), message);
  show(el("h1", {}, "Sign in"), el("p", {}, "This installation has API keys: sign in with one. It is kept in " +
    "this tab only, and sent in the Authorization header."), form);
  input.focus();
}

async function functionsPage() {
  const { functions } = await api("/functions");
  const search = el("input", { type: "search", id: "search", placeholder: "Search by name or id", size: 32 });
  const rows = functions.map((fn) => ({ fn, text: `${fn.name} ${fn.function_id}`.toLowerCase() }));
  const list = el("div");
  const draw = () => {
    const wanted = search.value.trim().toLowerCase();
    list.replaceChildren(table(["name", "id", "version", "handler", "timeout", "memory", "updated"],
      rows.filter((row) => row.text.includes(wanted)).map(({ fn }) => [
        link(`#/functions/${encodeURIComponent(fn.function_id)}`, fn.name), fn.function_id, fn.version,
        fn.handler || "script", `${fn.limits.timeout_s} s`, `${fn.limits.memory_mb} MB`, when(fn.updated_at)]),
      functions.length ? "No function matches." : "No functions yet: create one."));
  };
  search.addEventListener("input", draw);
  draw();
  show(el("div", { class: "title" }, el("h1", {}, "Functions"), link("#/functions/new", "New function")),
    search, list);
}

async function newFunctionPage() {
  const limits = await api("/limits");
  const field = (id, label, attributes, hint) => el("p", {},
    el("label", { for: id }, label), el("input", { id, name: id, ...attributes }),
    hint ? el("span", { class: "muted" }, ` ${hint}`) : null);
  const code = el("textarea", { id: "code", rows: 14, cols: 80, spellcheck: "false" }, STARTER);
  code.addEventListener("keydown", (event) => { // Tab indents instead of leaving the editor
    if (event.key !== "Tab" || event.shiftKey) return;
    event.preventDefault();
    code.setRangeText("    ", code.selectionStart, code.selectionEnd, "end");
  });
  const requirements = el("textarea", { id: "requirements", rows: 3, cols: 80, spellcheck: "false",
    placeholder: "numpy>=2" });
  const file = el("input", { id: "file", type: "file", accept: ".py,.zip" });
  const message = el("div");
  const form = el("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(["name", "handler", "timeout_s", "memory_mb"].map((name) =>
      [name, document.getElementById(name).value.trim()]));
    const chosen = {};
    if (values.handler) chosen.handler = values.handler;
    for (const name of ["timeout_s", "memory_mb"]) if (values[name]) chosen[name] = Number(values[name]);
    if (requirements.value.trim()) chosen.requirements = requirements.value;
    try {
      let created;
      if (file.files.length) {
        const upload = new FormData();
        upload.append("name", values.name);
        for (const [name, value] of Object.entries(chosen)) upload.append(name, String(value));
        upload.append("file", file.files[0]);
        created = await api("/functions", { method: "POST", form: upload });
      } else {
        created = await api("/functions", { method: "POST", body: { name: values.name, code: code.value, ...chosen } });
      }
      location.hash = `#/functions/${encodeURIComponent(created.function_id)}`;
    } catch (error) {
      message.replaceChildren(problem(error));
    }
  } },
  field("name", "Name", { required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_\\-]{0,63}", size: 32 },
    "letters, digits, - and _"),
  field("handler", "Handler", { size: 32, placeholder: "handler" }, "the function in main.py to call"),
  field("timeout_s", "Timeout (s)", { type: "number", min: 0.1, step: "any", max: limits.timeout_s.ceiling },
    `default ${limits.timeout_s.default}, at most ${limits.timeout_s.ceiling}`),
  field("memory_mb", "Memory (MB)", { type: "number", min: 16, max: limits.memory_mb.ceiling },
    `default ${limits.memory_mb.default}, at most ${limits.memory_mb.ceiling}`),
  el("p", {}, el("label", { for: "code" }, "Code (main.py)")), code,
  el("p", {}, el("label", { for: "requirements" }, "Requirements (requirements.txt, optional)")), requirements,
  el("p", {}, el("label", { for: "file" }, "…or upload a .py or .zip "), file),
  el("button", { type: "submit" }, "Create"), message);
  show(el("h1", {}, "New function"), form);
}

async function functionPage(functionId) {
  const path = `/functions/${encodeURIComponent(functionId)}`;
  const [fn, { schedules }, { jobs }, { versions }] = await Promise.all([api(path), api(`${path}/schedules`),
    api(`${path}/jobs?limit=10`), api(`${path}/versions`)]);
  const input = el("textarea", { id: "input", rows: 4, cols: 60, spellcheck: "false" }, "{}");
  const runArea = el("div");
  const recent = el("div", { id: "recent-runs" }, jobsTable(jobs, false));
  const refreshRecent = async () => {
    try {
      recent.replaceChildren(jobsTable((await api(`${path}/jobs?limit=10`)).jobs, false));
    } catch (error) {
      recent.replaceChildren(problem(error));
    }
  };
  const runButton = el("button", { id: "run", type: "submit" }, "Run");
  const runForm = el("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    let event_;
    try {
      event_ = JSON.parse(input.value || "{}");
    } catch (error) {
      runArea.replaceChildren(problem(new Error(`The input is not valid JSON: ${error.message}`)));
      return;
    }
    runButton.disabled = true;
    try {
      const job = await api(`${path}/run`, { method: "POST", body: { input: event_, wait_s: 0 } });
      runArea.replaceChildren(liveRun(job.job_id, () => {
        runButton.disabled = false;
        refreshRecent();
      }));
    } catch (error) {
      runButton.disabled = false;
      runArea.replaceChildren(problem(error));
    }
  } }, el("label", { for: "input" }, "Input (JSON)"), input, runButton, runArea);
  const limits = Object.entries(fn.limits || {}).map(([name, value]) => `${name} ${value}`).join(", ");
  const build = fn.build ? el("span", { id: "build-status" }, statusBadge(fn.build.status),
    fn.build.error ? ` ${fn.build.error}` : "", fn.build.size_bytes ? ` (${(fn.build.size_bytes / 2 ** 20).toFixed(1)} MiB)` : "")
    : null;
  const buildLog = el("pre", { id: "build-log" });
  const buildSection = fn.build ? el("details", { ontoggle: async (event) => {
    if (!event.target.open || buildLog.textContent) return;
    try {
      buildLog.textContent = (await api(`${path}/build`)).log || "(no output yet)";
    } catch (error) {
      buildLog.replaceChildren(problem(error));
    }
  } }, el("summary", {}, "Build log"), buildLog) : null;
  show(el("div", { class: "title" }, el("h1", {}, fn.name),
    link(`#/jobs?function_id=${encodeURIComponent(fn.function_id)}`, "All its jobs")),
  facts([["id", fn.function_id], ["version", fn.version], ["handler", fn.handler || "script mode"],
    ["code sha256", fn.code_sha256], ["limits", limits], ["init", fn.init],
    ["max concurrency", fn.max_concurrency], ["secrets", (fn.secrets || []).join(", ")],
    ["aliases", Object.entries(fn.aliases || {}).map(([name, alias]) => `${name} → v${alias.version}` +
      Object.entries(alias.weights || {}).map(([v, share]) => ` (${Math.round(share * 100)}% v${v})`).join(""))
      .join(", ")],
    ["requirements", fn.requirements ? el("pre", {}, fn.requirements) : null], ["build", build],
    ["retries", fn.retries ? json(fn.retries) : null], ["callback", fn.callback_url],
    ["created", when(fn.created_at)], ["updated", when(fn.updated_at)]]),
  buildSection,
  el("h2", {}, "Run"), runForm,
  el("h2", {}, "Versions"),
  table(["version", "created", "code sha256", "handler", "build", "aliases"], versions.map((v) => [`v${v.version}`,
    when(v.created_at), v.code_sha256.slice(0, 12), v.handler || "script", v.build ? statusBadge(v.build.status) : "–",
    v.aliases.join(", ")]), "No versions."),
  el("h2", {}, "Schedules"),
  table(["id", "when", "overlap", "enabled", "next run"], schedules.map((s) => [s.schedule_id,
    s.cron ? `cron ${s.cron} (${s.timezone || "UTC"})` : `every ${s.interval_s} s`, s.overlap,
    s.enabled ? "yes" : "no", when(s.next_run_at)]), "No schedules."),
  el("h2", {}, "Recent runs"), recent);
}

function jobsTable(jobs, withFunction = true, empty = "No runs yet.") {
  return table(["job", ...(withFunction ? ["function"] : []), "status", "error", "created", "duration"],
    jobs.map((job) => [link(`#/jobs/${encodeURIComponent(job.job_id)}`, job.job_id),
      ...(withFunction ? [link(`#/functions/${encodeURIComponent(job.function_id)}`, job.function_id)] : []),
      statusBadge(job.status), job.error ? job.error.type : "", when(job.created_at),
      job.duration_ms === null ? "" : `${job.duration_ms} ms`]), empty);
}

async function jobsPage(query) {
  const filters = new URLSearchParams();
  for (const name of ["status", "function_id", "since", "until", "cursor"]) {
    if (query.get(name)) filters.set(name, query.get(name));
  }
  filters.set("limit", "25");
  const { jobs, next_cursor: next } = await api(`/jobs?${filters}`);
  const status = el("select", { id: "status" }, el("option", { value: "" }, "any status"),
    STATUSES.map((name) => el("option", { value: name, selected: query.get("status") === name }, name)));
  const functionId = el("input", { id: "function_id", size: 24, placeholder: "function id",
    value: query.get("function_id") || "" });
  const since = el("input", { id: "since", type: "datetime-local", value: query.get("since_local") || "" });
  const until = el("input", { id: "until", type: "datetime-local", value: query.get("until_local") || "" });
  const form = el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const wanted = new URLSearchParams();
    if (status.value) wanted.set("status", status.value);
    if (functionId.value.trim()) wanted.set("function_id", functionId.value.trim());
    for (const [name, input] of [["since", since], ["until", until]]) {
      if (!input.value) continue;
      wanted.set(name, new Date(input.value).toISOString()); // the API's time, from the browser's local one
      wanted.set(`${name}_local`, input.value);
    }
    location.hash = `#/jobs?${wanted}`;
  } }, status, functionId, el("label", { for: "since" }, "since"), since, el("label", { for: "until" }, "until"),
  until, el("button", { type: "submit" }, "Filter"));
  const older = new URLSearchParams(query);
  if (next) older.set("cursor", next);
  const filtered = ["status", "function_id", "since", "until"].some((name) => query.get(name));
  show(el("h1", {}, "Jobs"), form, jobsTable(jobs, true, filtered ? "No job matches these filters." : "No runs yet."),
    el("p", { class: "pager" }, query.get("cursor") ? el("a", { href: "#", onclick: (event) => {
      event.preventDefault();
      history.back();
    } }, "← Newer") : null, " ", next ? link(`#/jobs?${older}`, "Older →") : null));
}

async function jobPage(jobId) {
  const job = await api(`/jobs/${encodeURIComponent(jobId)}`);
  const parts = [el("div", { class: "title" }, el("h1", {}, "Job ", el("code", {}, job.job_id)),
    statusBadge(job.status)),
  facts([["function", link(`#/functions/${encodeURIComponent(job.function_id)}`, job.function_id)],
    ["version", job.function_version], ["attempt", job.attempt],
    ["trigger", job.trigger ? json(job.trigger) : "a run request"]]),
  el("h2", {}, "Timeline"),
  el("ol", { class: "timeline" }, el("li", {}, `created ${when(job.created_at)}`),
    job.started_at ? el("li", {}, `started ${when(job.started_at)}`) : null,
    job.finished_at ? el("li", {}, `${job.status === "SUCCESS" ? "succeeded" : "ended"} ${when(job.finished_at)}`)
      : el("li", { class: "muted" }, `${job.status.toLowerCase()}…`))];
  if (!TERMINAL.has(job.status)) {
    parts.push(el("h2", {}, "Live"), liveRun(job.job_id, () => route()));
    show(...parts);
    return;
  }
  parts.push(outcome(job),
    el("h2", {}, "Output"), el("pre", { class: "output", "data-field": "stdout" }, job.stdout || ""),
    el("h2", {}, "Errors"), el("pre", { class: "output stderr", "data-field": "stderr" }, job.stderr || ""));
  if (job.attempts && job.attempts.length) {
    parts.push(el("h2", {}, "Attempts"), table(["attempt", "error", "started", "finished"],
      job.attempts.map((a) => [a.attempt, a.error ? `${a.error.type}: ${a.error.message}` : "",
        when(a.started_at), when(a.finished_at)]), ""));
  }
  if (job.callbacks && job.callbacks.length) {
    parts.push(el("h2", {}, "Callbacks"), table(["url", "status", "attempts", "last error"],
      job.callbacks.map((c) => [c.url, c.status, c.attempts, c.last_error || ""]), ""));
  }
  if (job.ai_usage) parts.push(el("h2", {}, "AI usage"), el("pre", { class: "output" }, json(job.ai_usage)));
  show(...parts);
}

// -- routing --------------------------------------------------------------------------------

const ROUTES = [
  [/^\/signin$/, signInPage, null],
  [/^\/functions$/, functionsPage, "functions"],
  [/^\/functions\/new$/, newFunctionPage, "functions"],
  [/^\/functions\/([^/]+)$/, functionPage, "functions"],
  [/^\/jobs$/, jobsPage, "jobs"],
  [/^\/jobs\/([^/]+)$/, jobPage, "jobs"],
];

async function route() {
  for (const stop of state.leaving.splice(0)) stop();
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  const signedIn = state.open || sessionStorage.getItem(KEY_STORAGE);
  if (!signedIn && path !== "/signin") {
    location.hash = "#/signin";
    return;
  }
  document.getElementById("sign-out").hidden = state.open || !sessionStorage.getItem(KEY_STORAGE);
  for (const [pattern, page, section] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    for (const item of document.querySelectorAll("nav a")) {
      item.classList.toggle("active", item.dataset.section === section);
    }
    try {
      await page(...match.slice(1).map(decodeURIComponent), ...(page === jobsPage ? [new URLSearchParams(search)] : []));
    } catch (error) {
      if (error.status !== 401) show(problem(error));
    }
    return;
  }
  location.hash = "#/functions";
}

// Operators' Flower, when the installation says where it is (NANOGRID_FLOWER_URL).
async function linkFlower() {
  try {
    const { flower } = await api("/", { key: null });
    if (flower && /^https?:\/\//.test(flower)) {
      document.querySelector("header nav").append(el("a", { href: flower, id: "flower", target: "_blank",
        rel: "noopener noreferrer" }, "Flower ↗"));
    }
  } catch (ignored) { /* no link */ }
}

async function start() {
  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    location.hash = "#/signin";
  });
  try {
    await api("/limits", { key: null });
    state.open = true;
  } catch (error) {
    if (error.status !== 401) {
      show(problem(error));
      return;
    }
    state.open = false;
  }
  linkFlower();
  const mode = document.getElementById("mode");
  mode.textContent = state.open ? "open installation: no key needed, anyone who reaches it can use it"
    : "keys required";
  mode.classList.toggle("warn", state.open);
  window.addEventListener("hashchange", route);
  route();
}

start();
