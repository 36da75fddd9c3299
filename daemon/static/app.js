// plaudit status page: polls the JSON API, draws small SVG charts, sends control calls.
// Everything the daemon or the model wrote is inserted with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "plaudit.token";
const STATUS_EVERY_MS = 2000;
const SLOW_EVERY_MS = 10000;
const FEED_PAGE = 10;
// Chart id -> series recorded by the controller (Store.record_metrics); the first is primary.
// Offline (cross-entropy) and online (policy-gradient) losses are different quantities: two charts.
const CHARTS = { offline: ["offline_loss"], loss: ["loss"], reward: ["reward"], kl: ["kl"] };
const CHART_SERIES = Object.values(CHARTS).flat();

// What "Next post" says while posting waits for the first offline fit.
const FIRST_FIT = "after the first offline fit";

const $ = (id) => document.getElementById(id);
let feedOffset = 0;
let lastStatus = null;

// -- API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (options.method === "POST" && token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: keep null */ }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// A mutating call: asks for the token when there is none or when the daemon refused it.
async function act(path, body) {
  if (!sessionStorage.getItem(TOKEN_KEY) && !(await askToken())) {
    throw new Error("this needs the API token");
  }
  try {
    return await api(path, { method: "POST", body });
  } catch (err) {
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      updateTokenButton();
      if (await askToken("The daemon refused that token. Paste the current one.")) {
        return api(path, { method: "POST", body });
      }
    }
    throw err;
  }
}

// -- token ---------------------------------------------------------------------------------

function askToken(message) {
  const dialog = $("token-dialog");
  if (message) dialog.querySelector("p").textContent = message;
  $("token-input").value = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", function onClose() {
      dialog.removeEventListener("close", onClose);
      const value = $("token-input").value.trim();
      if (dialog.returnValue === "save" && value) {
        sessionStorage.setItem(TOKEN_KEY, value);
        updateTokenButton();
        resolve(true);
      } else {
        resolve(false);
      }
    });
    if (!dialog.open) dialog.showModal();
  });
}

function updateTokenButton() {
  const has = Boolean(sessionStorage.getItem(TOKEN_KEY));
  $("token-button").textContent = has ? "Token set · change" : "Set token";
}

// -- formatting ----------------------------------------------------------------------------

function fmtNumber(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

function fmtAgo(ts) {
  if (!ts) return "never";
  const s = Date.now() / 1000 - ts;
  const ahead = s < 0;
  const a = Math.abs(s);
  const text = a < 60 ? `${Math.round(a)} s`
    : a < 3600 ? `${Math.round(a / 60)} min`
    : a < 86400 ? `${(a / 3600).toFixed(1)} h`
    : `${(a / 86400).toFixed(1)} d`;
  return ahead ? `in ${text}` : `${text} ago`;
}

// A scheduled time: "in 5 min", or "due" once it has passed (the job waits for a free slot).
function fmtDue(ts) {
  return ts * 1000 <= Date.now() ? "due" : fmtAgo(ts);
}

function fmtDuration(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function rewardChip(value) {
  const cls = value > 0 ? "chip pos" : value < 0 ? "chip neg" : "chip";
  return el("span", { class: cls, text: `${value >= 0 ? "+" : ""}${value.toFixed(2)}` });
}

function showBanner(text, kind = "error") {
  const banner = $("banner");
  banner.textContent = text;
  banner.className = kind === "info" ? "banner info" : "banner";
  banner.hidden = false;
  clearTimeout(showBanner.timer);
  showBanner.timer = setTimeout(() => { banner.hidden = true; }, kind === "info" ? 4000 : 10000);
}

// -- status --------------------------------------------------------------------------------

function renderStatus(s) {
  // A run just finished: its loss points and new posts are worth showing now.
  if (lastStatus && lastStatus.progress && !s.progress) { refreshCharts(); refreshFeed(); }
  // The queue changed (a post held, decided elsewhere, expired): fetch it now, not at the next poll.
  if (lastStatus && s !== lastStatus && (s.approvals_waiting !== lastStatus.approvals_waiting
      || s.approval_required !== lastStatus.approval_required)) refreshApprovals();
  lastStatus = s;
  const pill = $("state-pill");
  const state = s.state === "running" ? s.training : s.state;
  pill.dataset.state = state;
  pill.textContent = s.state === "running" ? `training ${s.training}` : s.state;
  $("summary-meta").textContent =
    `${s.mode} mode · policy v${s.policy_version} · ${s.model} · up ${fmtDuration(s.uptime_seconds)}`;
  $("training-state").textContent = s.training;
  $("training-mode").textContent = s.mode;
  $("policy-version").textContent = `v${s.policy_version}`;
  $("model-name").textContent = s.model;
  $("model-name").title = s.model;
  $("uptime").textContent = fmtDuration(s.uptime_seconds);
  $("posts-published").textContent = String(s.faces.reduce((n, f) => n + f.posts_published, 0));
  const last = Math.max(0, ...s.faces.map((f) => f.last_post_at || 0));
  $("last-post").textContent = last ? fmtAgo(last) : "never";
  // Posting waits for the first offline fit: a time that has passed would read "due".
  const nextPost = (t) => s.posting_waits_for_first_fit ? FIRST_FIT : t ? fmtDue(t) : "–";
  const upcoming = s.faces.map((f) => f.next_post_at).filter((t) => t);
  $("next-post").textContent = nextPost(upcoming.length ? Math.min(...upcoming) : null);
  $("next-post").title = s.posting_waits_for_first_fit
    ? "No post goes out before the first offline fit on the faces' history ends." : "";
  $("start-button").disabled = s.training === "running";
  $("stop-button").disabled = s.training === "paused";

  const progress = s.progress;
  $("progress").hidden = !progress;
  if (progress) {
    const total = progress.total_steps;
    const of = `step ${progress.step}${total ? ` of ${total}` : ""}`;
    // Stopped: the run ends at its next step boundary; the bar ends now.
    $("progress-bar").hidden = progress.stopping;
    const fill = $("progress-fill");
    fill.classList.toggle("indeterminate", !total);
    fill.style.width = total ? `${Math.min(100, (100 * progress.step) / total)}%` : "";
    $("progress-text").textContent = progress.stopping
      ? `${progress.mode} run stopped at ${of}; ending…`
      : `${progress.mode} run: ${of}`;
    const extra = [];
    if (progress.loss !== null) extra.push(`loss ${fmtNumber(progress.loss)}`);
    if (progress.tokens_per_second !== null && !progress.stopping) {
      extra.push(`${fmtNumber(progress.tokens_per_second)} tok/s`);
    }
    $("progress-extra").textContent = extra.join(" · ");
  }
  $("offline-button").disabled = Boolean(progress && progress.mode === "offline");

  const rm = s.reward_model;
  $("reward-model").textContent = !rm.enabled ? "off (posts chosen at random)"
    : !rm.fitted ? "waiting for history or rewards"
    : `${rm.selection} · ${rm.own_posts} rewarded + ${rm.history_posts} history posts`
      + (rm.talk_filter ? " · talk filter on" : "");
  const rhos = Object.entries(rm.spearman);
  $("reward-model-rho").textContent = rhos.length
    ? rhos.map(([face, rho]) => `${face} ρ ${fmtNumber(rho, 2)}`).join(" · ")
    : "not yet (3 rewarded posts)";
  const kinds = Object.entries(rm.post_kinds);
  $("post-kinds").textContent = kinds.length
    ? kinds.map(([face, k]) => `${face} ${k.candidates === null ? "–" : fmtNumber(k.candidates, 3)}`
      + ` of the history's ${fmtNumber(k.history, 3)}`).join(" · ")
    : rm.enabled ? "not yet (the history is clustered first)" : "off (the reward model is off)";

  const chips = $("last-rewards");
  chips.replaceChildren(...s.last_rewards.map(rewardChip));
  if (!s.last_rewards.length) chips.append(el("span", { class: "muted", text: "none yet" }));

  const body = $("faces-body");
  // data-label: a narrow screen shows each row as a card of labelled cells (app.css).
  body.replaceChildren(...s.faces.map((f) => el("tr", {},
    el("td", { "data-label": "Face", text: f.name }),
    el("td", { "data-label": "Type", text: f.type }),
    el("td", { "data-label": "Posts", class: "num", text: String(f.posts_published) }),
    el("td", { "data-label": "Last post", text: fmtAgo(f.last_post_at) }),
    el("td", { "data-label": "Next post", text: nextPost(f.next_post_at) }),
    el("td", { "data-label": "Last error", class: f.last_error ? "error" : "muted", text: f.last_error || "–" }),
  )));
  if (!s.faces.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "muted", text: "no faces" })));

  const names = $("face-names");
  names.replaceChildren(...s.faces.map((f) => el("option", { value: f.name })));

  const waitingPill = $("approval-pill");
  waitingPill.hidden = !(s.approval_required || s.approvals_waiting > 0);
  waitingPill.textContent = `${s.approvals_waiting} awaiting approval`;
  waitingPill.dataset.waiting = String(s.approvals_waiting);
  updateApprovalCard();
  updateHeldTimes();
}

async function refreshStatus() {
  try {
    renderStatus(await api("/api/status"));
  } catch (err) {
    const pill = $("state-pill");
    pill.dataset.state = "offline";
    pill.textContent = "unreachable";
    $("summary-meta").textContent = err.message;
  }
}

// -- charts --------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function drawChart(figure, seriesList) {
  const plot = figure.querySelector(".plot");
  const caption = figure.querySelector("figcaption");
  let last = caption.querySelector(".last");
  if (!last) { last = el("span", { class: "last" }); caption.append(last); }
  const all = seriesList.flat();
  if (!all.length) {
    last.textContent = "";
    plot.replaceChildren(el("div", { class: "empty", text: "no data yet" }));
    return;
  }
  const primary = seriesList.find((s) => s.length) || [];
  last.textContent = fmtNumber(primary[primary.length - 1][1]);
  const W = 300, H = 140, L = 40, R = 8, T = 8, B = 18;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  // Enough significant digits that the three axis labels differ (a loss of 6.21..6.25).
  const magnitude = Math.max(Math.abs(y0), Math.abs(y1)) || 1;
  const axisDigits = Math.min(6, Math.max(2, Math.ceil(Math.log10(magnitude / (y1 - y0))) + 2));
  for (const frac of [0, 0.5, 1]) {
    const y = y0 + frac * (y1 - y0);
    svg.append(svgEl("line", { class: "grid-line", x1: L, x2: W - R, y1: sy(y), y2: sy(y) }));
    const label = svgEl("text", { class: "axis", x: L - 4, y: sy(y) + 3, "text-anchor": "end" });
    label.textContent = fmtNumber(y, axisDigits);
    svg.append(label);
  }
  const span = svgEl("text", { class: "axis", x: W - R, y: H - 4, "text-anchor": "end" });
  span.textContent = `last ${fmtDuration(x1 - x0)}`;
  svg.append(span);
  seriesList.forEach((points, i) => {
    if (!points.length) return;
    const d = points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    const cls = i ? "series secondary" : "series";
    svg.append(svgEl("path", { class: cls, d, "vector-effect": "non-scaling-stroke" }));
    // The newest point as a dot: visible even when a series has a single point so far.
    const [lx, ly] = points[points.length - 1];
    svg.append(svgEl("circle", { class: `${cls} dot`, cx: sx(lx), cy: sy(ly), r: 2.5 }));
  });
  plot.replaceChildren(svg);
}

async function refreshCharts() {
  try {
    const data = await api(`/api/metrics/history?names=${CHART_SERIES.join(",")}`);
    for (const [id, names] of Object.entries(CHARTS)) {
      drawChart($(`chart-${id}`), names.map((n) => data.series[n] || []));
    }
  } catch (err) {
    showBanner(`Charts: ${err.message}`);
  }
}

// -- feed ----------------------------------------------------------------------------------

// A link only to a web page: the simulated face's simulated:// refs (and anything but http[s])
// lead nowhere in a browser.
function webUrl(url) {
  try {
    const u = new URL(url);
    return u.protocol === "https:" || u.protocol === "http:" ? u.href : null;
  } catch (_) {
    return null;
  }
}

function renderPost(p) {
  const meta = el("div", { class: "post-meta" },
    el("span", { text: p.face }),
    el("span", { text: p.published_at ? fmtAgo(p.published_at) : p.status }),
    el("span", { text: `policy v${p.policy_version}` }));
  if (p.approval === "edited") {
    meta.append(el("span", {
      class: "chip edited",
      text: "edited",
      title: "Published in a human's words (approval queue): it trains the reward model, not the policy.",
    }));
  }
  if (p.deleted) {
    // The face no longer finds it: its reactions read 0 and no reward will come.
    meta.append(el("span", { class: "chip neg deleted", text: "deleted on the platform" }));
  } else if (p.reactions) {
    for (const [k, v] of Object.entries(p.reactions)) meta.append(el("span", { class: "chip", text: `${k} ${v}` }));
  }
  if (p.reward !== null) meta.append(rewardChip(p.reward));
  const url = p.url && !p.deleted ? webUrl(p.url) : null;
  if (url) meta.append(el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: "open" }));
  return el("li", { class: p.deleted ? "deleted" : "" }, el("p", { class: "post-text", text: p.text }), meta);
}

async function refreshFeed() {
  try {
    const page = await api(`/api/posts?limit=${FEED_PAGE}&offset=${feedOffset}`);
    const feed = $("feed");
    feed.replaceChildren(...page.posts.map(renderPost));
    if (!page.posts.length) feed.append(el("li", { class: "empty", text: "no posts yet" }));
    $("feed-total").textContent = `(${page.total})`;
    $("feed-newer").disabled = feedOffset === 0;
    $("feed-older").disabled = feedOffset + FEED_PAGE >= page.total;
  } catch (err) {
    showBanner(`Feed: ${err.message}`);
  }
}

// -- approval queue ------------------------------------------------------------------------
// Held posts are drawn once and updated in place: a poll never resets a text being edited.
// A post that left the queue stays on the page while it shows an error or an unsaved edit.

let approvals = null; // the last /api/approvals answer
const heldItems = new Map(); // post id -> { post, li, textarea, buttons, error, ... }

function isEdited(item) {
  return item.textarea.value.trim() !== item.post.text;
}

function syncHeldButtons(item) {
  const busy = item.busy || item.gone;
  item.approve.disabled = busy;
  item.reject.disabled = busy;
  item.save.disabled = busy || !isEdited(item);
}

function setHeldError(item, message) {
  item.error.textContent = message;
  item.error.hidden = !message;
}

function heldItem(p) {
  const textId = `held-text-${p.id}`;
  const textarea = el("textarea", { id: textId, rows: "3", spellcheck: "true" });
  textarea.value = p.text;
  const meta = el("div", { class: "post-meta" },
    el("span", { class: "face", text: p.face }),
    el("span", { text: `post ${p.id}` }),
    el("span", { text: `policy v${p.policy_version}` }));
  if (p.predicted_reward !== null && p.predicted_reward !== undefined) {
    meta.append(el("span", { class: "predicted" }, "predicted ", rewardChip(p.predicted_reward)));
  }
  const expires = el("span", { class: "expires" });
  meta.append(expires);
  const button = (cls, text, label) => el("button", { type: "button", class: cls, text, "aria-label": label });
  const item = {
    post: p,
    textarea,
    expires,
    busy: false,
    gone: false,
    approve: button("approve", "Approve", `Approve post ${p.id}`),
    save: button("secondary save", "Save edit & approve", `Save edit and approve post ${p.id}`),
    reject: button("danger reject", "Reject", `Reject post ${p.id}`),
    dismiss: button("ghost dismiss", "Dismiss", `Dismiss post ${p.id}`),
    error: el("p", { class: "held-error", role: "alert" }),
  };
  item.error.hidden = true;
  item.dismiss.hidden = true;
  item.li = el("li", { class: "held-post", "data-post-id": String(p.id) },
    meta,
    el("label", { for: textId }, `Text of post ${p.id}`, textarea),
    item.error,
    el("div", { class: "actions" }, item.approve, item.save, item.reject, item.dismiss));
  textarea.addEventListener("input", () => syncHeldButtons(item));
  item.approve.addEventListener("click", () => decide(item, "/api/approvals/approve",
    { post_id: p.id }, `Post ${p.id} approved.`));
  item.save.addEventListener("click", () => decide(item, "/api/approvals/approve",
    { post_id: p.id, text: textarea.value }, `Post ${p.id} approved with your edit.`));
  item.reject.addEventListener("click", () => decide(item, "/api/approvals/reject",
    { post_id: p.id }, `Post ${p.id} rejected.`));
  item.dismiss.addEventListener("click", () => {
    heldItems.delete(p.id);
    item.li.remove();
    updateApprovalCard();
  });
  syncHeldButtons(item);
  return item;
}

// The post is no longer awaiting (decided elsewhere, expired): no more actions on it.
function markGone(item) {
  if (item.gone) return;
  item.gone = true;
  item.li.classList.add("gone");
  item.textarea.readOnly = true;
  item.expires.textContent = "no longer awaiting approval";
  item.dismiss.hidden = false;
  for (const b of [item.approve, item.save, item.reject]) b.hidden = true;
  syncHeldButtons(item);
}

function updateHeldTimes() {
  const now = Date.now() / 1000;
  for (const item of heldItems.values()) {
    const at = item.post.expires_at;
    if (item.gone || !at) continue;
    item.expires.textContent = at <= now ? "expires now" : `expires ${fmtAgo(at)}`;
    item.expires.title = new Date(at * 1000).toLocaleString();
  }
}

async function decide(item, path, body, done) {
  item.busy = true;
  syncHeldButtons(item);
  setHeldError(item, "");
  try {
    await act(path, body);
    heldItems.delete(item.post.id);
    item.li.remove();
    showBanner(done, "info");
  } catch (err) {
    // 400: the edit cannot go out as it is; 409: the post expired or was decided meanwhile.
    setHeldError(item, err.message);
  } finally {
    item.busy = false;
    syncHeldButtons(item);
  }
  await Promise.all([refreshApprovals(), refreshStatus(), refreshFeed()]);
}

function approvedItem(p) {
  const meta = el("div", { class: "post-meta" },
    el("span", { class: "face", text: p.face }),
    el("span", { text: `post ${p.id}` }),
    el("span", { class: "approved-status", text: "approved, publishes at the face's next chance" }));
  if (p.original_text !== null && p.original_text !== undefined) {
    meta.append(el("span", { class: "chip edited", text: "edited", title: `The model wrote: ${p.original_text}` }));
  }
  if (p.approval === "expired") {
    meta.append(el("span", { class: "chip", text: "nobody decided: published as it is" }));
  }
  return el("li", { class: "approved-post", "data-post-id": String(p.id) },
    el("p", { class: "post-text", text: p.text }), meta);
}

function approvalRules(q) {
  const reward = `${q.rejected_reward >= 0 ? "+" : ""}${fmtNumber(q.rejected_reward)}`;
  const expiry = q.on_expiry === "publish" ? "it is published as it is" : "it is dropped, with no reward";
  const parts = [
    "Approve publishes the model's text; Save edit & approve publishes yours (an edited post trains the reward model only).",
    `Reject: never published; the post trains the model with reward ${reward} (the audience's rewards run from −3 to +3).`,
    `Nobody decides within ${fmtDuration(q.expire_after_seconds).replace(".0 ", " ")}: ${expiry}.`,
  ];
  if (!q.required) parts.unshift("The queue is off ([approval] required = false); these posts were held before.");
  return parts.join(" ");
}

function renderApprovals(q) {
  approvals = q;
  const awaiting = q.posts.filter((p) => p.status === "awaiting");
  const approved = q.posts.filter((p) => p.status === "approved");
  const items = [];
  const seen = new Set();
  for (const p of awaiting) {
    seen.add(p.id);
    let item = heldItems.get(p.id);
    if (!item) {
      item = heldItem(p);
      heldItems.set(p.id, item);
    } else {
      item.post = p;
      syncHeldButtons(item);
    }
    items.push(item.li);
  }
  for (const [id, item] of heldItems) {
    if (seen.has(id)) continue;
    if (item.error.hidden && !isEdited(item)) { heldItems.delete(id); continue; }
    markGone(item);
    items.push(item.li);
  }
  if (!items.length) items.push(el("li", { class: "empty", text: "nothing awaits a decision" }));
  const list = $("approval-list");
  // Only when something changed: moving the nodes would take the focus from a text being edited.
  const current = [...list.children];
  if (current.length !== items.length || items.some((li, i) => current[i] !== li)) list.replaceChildren(...items);
  $("approval-count").textContent = `(${awaiting.length})`;
  $("approval-card").classList.toggle("waiting", awaiting.length > 0);
  $("approval-rules").textContent = approvalRules(q);
  $("approved-block").hidden = !approved.length;
  $("approved-list").replaceChildren(...approved.map(approvedItem));
  updateHeldTimes();
  updateApprovalCard();
}

// The section is for a queue that is on or holds posts: no empty panel for a feature that is off.
function updateApprovalCard() {
  const s = lastStatus;
  $("approval-card").hidden = !(
    (s && (s.approval_required || s.approvals_waiting > 0))
    || (approvals && (approvals.required || approvals.posts.length > 0))
    || heldItems.size > 0);
}

async function refreshApprovals() {
  try {
    renderApprovals(await api("/api/approvals"));
  } catch (err) {
    showBanner(`Approvals: ${err.message}`);
  }
}

// -- actions -------------------------------------------------------------------------------

function numberField(form, name) {
  const raw = form.elements[name].value.trim();
  return raw === "" ? undefined : Number(raw);
}

async function withButton(button, work) {
  button.disabled = true;
  try {
    await work();
  } catch (err) {
    showBanner(err.message);
  } finally {
    button.disabled = false;
    if (lastStatus) renderStatus(lastStatus);
  }
}

function bind() {
  $("token-button").addEventListener("click", () => askToken());
  $("start-button").addEventListener("click", (e) => withButton(e.currentTarget, async () => {
    renderStatus(await act("/api/training/start", { mode: "online" }));
    showBanner("Training started.", "info");
  }));
  $("stop-button").addEventListener("click", (e) => withButton(e.currentTarget, async () => {
    renderStatus(await act("/api/training/stop"));
    showBanner("Training stopped.", "info");
  }));
  $("offline-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = e.currentTarget;
    const body = { mode: "offline" };
    const data = form.elements.data.value.trim();
    if (data) body.data = data;
    for (const name of ["epochs", "lr", "max_steps", "batch_size"]) {
      const value = numberField(form, name);
      if (value !== undefined) body[name] = value;
    }
    withButton($("offline-button"), async () => {
      renderStatus(await act("/api/training/start", body));
      showBanner("Offline run started.", "info");
    });
  });
  $("generate-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = e.currentTarget;
    const body = {};
    const prompt = form.elements.prompt.value.trim();
    if (prompt) body.prompt = prompt;
    for (const name of ["n", "temperature", "max_new_tokens"]) {
      const value = numberField(form, name);
      if (value !== undefined) body[name] = value;
    }
    withButton($("generate-button"), async () => {
      const list = $("samples");
      list.replaceChildren(el("li", { class: "empty", text: "generating…" }));
      try {
        const result = await act("/api/generate", body);
        list.replaceChildren(...result.samples.map((s) => {
          const meta = el("div", { class: "post-meta" },
            el("span", { text: `${s.tokens} tokens` }),
            el("span", { text: `mean logprob ${fmtNumber(s.mean_logprob)}` }));
          if (s.predicted_reward !== null && s.predicted_reward !== undefined) {
            meta.append(el("span", { text: "predicted" }), rewardChip(s.predicted_reward));
          }
          return el("li", { class: "sample" }, el("p", { class: "post-text", text: s.text }), meta);
        }));
      } catch (err) {
        list.replaceChildren();
        throw err;
      }
    });
  });
  $("feed-newer").addEventListener("click", () => { feedOffset = Math.max(0, feedOffset - FEED_PAGE); refreshFeed(); });
  $("feed-older").addEventListener("click", () => { feedOffset += FEED_PAGE; refreshFeed(); });
}

function schedule(fn, everyMs) {
  fn();
  setInterval(() => { if (!document.hidden) fn(); }, everyMs);
}

document.addEventListener("DOMContentLoaded", () => {
  bind();
  updateTokenButton();
  schedule(refreshStatus, STATUS_EVERY_MS);
  schedule(refreshCharts, SLOW_EVERY_MS);
  schedule(refreshFeed, SLOW_EVERY_MS);
  schedule(refreshApprovals, SLOW_EVERY_MS);
  // No token asked for here: reading needs none; act() asks when an action needs it.
});
