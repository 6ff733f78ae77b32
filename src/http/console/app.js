// The marketing console: a static page over the admin API (no build step, no CDN).
// The admin token lives in sessionStorage of this tab only.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("flashcoupon-token") || "";
let selected = null;        // campaign id shown in the live view
let history = [];           // [{t, issued}] of the selected campaign, last ~60 s
let pendingBrake = null;    // "pause" | "resume" awaiting confirmation

async function api(method, path, body, headers) {
  const response = await fetch(path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + token },
      body ? { "Content-Type": "application/json" } : {}, headers || {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) { signOut("The token was refused."); }
  return { status: response.status, ok: response.ok, data };
}

function signOut(message) {
  token = "";
  sessionStorage.removeItem("flashcoupon-token");
  $("app").hidden = true; $("logout").hidden = true; $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function signIn(candidate) {
  token = candidate;
  const { ok, status } = await api("GET", "/admin/v1/campaigns");
  if (!ok) { signOut(status === 401 ? "The token was refused." : "The service answered " + status + "."); return; }
  sessionStorage.setItem("flashcoupon-token", token);
  $("login").hidden = true; $("app").hidden = false; $("logout").hidden = false;
  refresh();
}

const fmt = (iso) => iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "");

function until(iso) {
  let s = Math.max(0, Math.round((Date.parse(iso) - Date.now()) / 1000));
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return (h ? h + " h " : "") + (h || m ? m + " min " : "") + s + " s";
}

function renderList(campaigns) {
  const rows = $("campaign-rows");
  rows.replaceChildren(...campaigns.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.id = c.id;
    for (const text of [c.id, c.name, null, c.issued + " / " + c.total_quantity, fmt(c.starts_at) + " → " + fmt(c.ends_at)]) {
      const td = document.createElement("td");
      if (text === null) {
        const badge = document.createElement("span");
        badge.className = "status " + c.status; badge.textContent = c.status;
        td.append(badge);
      } else { td.textContent = text; }
      tr.append(td);
    }
    tr.addEventListener("click", () => select(c.id));
    return tr;
  }));
}

function select(id) {
  if (selected !== id) { history = []; }
  selected = id; $("live").hidden = false; cancelBrake();
  refresh();
}

function renderLive(c) {
  const now = Date.now();
  history.push({ t: now, issued: c.issued });
  history = history.filter((p) => now - p.t <= 61000);
  const last = history.length > 1 ? history[history.length - 2] : null;
  const rate = last ? Math.max(0, (c.issued - last.issued) / ((now - last.t) / 1000)) : 0;
  $("live-id").textContent = c.id;
  $("live-name").textContent = c.name;
  $("live-status").textContent = c.status;
  $("live-status").className = "status " + c.status;
  $("live-issued").textContent = c.issued;
  $("live-remaining").textContent = c.remaining;
  $("live-persisted").textContent = c.persisted ?? "-";
  $("live-pending").textContent = c.pending_events ?? "-";
  $("live-rate").textContent = rate.toFixed(1);
  const opensIn = Date.parse(c.starts_at) - now, closesIn = Date.parse(c.ends_at) - now;
  $("live-countdown").textContent = opensIn > 0 ? "opens in " + until(c.starts_at)
    : closesIn > 0 ? "closes in " + until(c.ends_at) : "closed at " + fmt(c.ends_at) + " UTC";
  $("pause").disabled = c.paused; $("resume").disabled = !c.paused;
  drawChart();
}

function drawChart() {
  const canvas = $("live-chart"), g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  const rates = [];
  for (let i = 1; i < history.length; i++) {
    const dt = (history[i].t - history[i - 1].t) / 1000;
    rates.push({ t: history[i].t, r: dt > 0 ? Math.max(0, (history[i].issued - history[i - 1].issued) / dt) : 0 });
  }
  const max = Math.max(1, ...rates.map((p) => p.r));
  g.fillStyle = "#667"; g.font = "11px sans-serif";
  g.fillText(max.toFixed(0) + " claims/s", 4, 12); g.fillText("last 60 s", w - 52, h - 4);
  g.strokeStyle = "#2f6fde"; g.lineWidth = 2; g.beginPath();
  const now = Date.now();
  rates.forEach((p, i) => {
    const x = w - ((now - p.t) / 60000) * w, y = h - 4 - (p.r / max) * (h - 20);
    if (i === 0) { g.moveTo(x, y); } else { g.lineTo(x, y); }
  });
  g.stroke();
}

async function refresh() {
  if (!token) { return; }
  const list = await api("GET", "/admin/v1/campaigns");
  if (list.ok) { renderList(list.data.campaigns); }
  if (selected !== null) {
    const one = await api("GET", "/admin/v1/campaigns/" + selected);
    if (one.ok) { renderLive(one.data); }
  }
}

function askBrake(action) {
  pendingBrake = action;
  $("confirm-text").textContent = (action === "pause"
    ? "Pause campaign " + selected + "? Shoppers will get 'campaign not open' until you resume."
    : "Resume campaign " + selected + "? Shoppers can claim again at once.");
  $("confirm").hidden = false; $("brake-error").textContent = "";
}

function cancelBrake() { pendingBrake = null; $("confirm").hidden = true; }

async function confirmBrake() {
  const action = pendingBrake; cancelBrake();
  if (!action || selected === null) { return; }
  const { ok, data, status } = await api("POST", "/admin/v1/campaigns/" + selected + "/" + action);
  if (!ok) { $("brake-error").textContent = data.detail || ("failed: " + status); }
  refresh();
}

function utcFromLocalInput(value) {
  // datetime-local has no zone; the form is in UTC, as the labels say.
  if (!value) { return ""; }
  return (value.length === 16 ? value + ":00" : value) + "Z";
}

// One Idempotency-Key per campaign to create: a retry after a 503 or a lost answer
// gets the campaign the first press wrote, not a second one. A new key after success.
const newKey = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
  (b) => b.toString(16).padStart(2, "0")).join("");
let createKey = newKey();

async function create(event) {
  event.preventDefault();
  const form = event.target;
  for (const p of form.querySelectorAll(".error")) { p.textContent = ""; }
  $("create-ok").textContent = "";
  const v = (name) => form.elements[name].value.trim();
  const body = {
    name: v("name"),
    total_quantity: v("total_quantity") === "" ? 0 : Number(v("total_quantity")),
    starts_at: utcFromLocalInput(v("starts_at")),
    ends_at: utcFromLocalInput(v("ends_at")),
    discount: { kind: v("discount_kind"), value: v("discount_value") || "0" },
    coupon_valid_days: Number(v("coupon_valid_days") || 0),
  };
  const { ok, data, status } = await api("POST", "/admin/v1/campaigns", body,
    { "Idempotency-Key": createKey });
  if (ok) {
    $("create-ok").textContent = "Campaign " + data.id + " created.";
    createKey = newKey();
    form.reset();
    select(data.id);
    return;
  }
  // problem+json: show the detail next to the field it names.
  // A body that does not parse names its field in the detail ("body: starts_at: ...").
  const named = data.field || ((data.detail || "").match(/^body: ([a-z_.]+)/) || [])[1] || "";
  const field = named.replace(/^discount(\.kind)?$/, "discount.value");
  const slot = form.querySelector('.error[data-field="' + field + '"]') || form.querySelector('.error[data-field="*"]');
  slot.textContent = data.detail || ("failed: " + status);
}

$("login-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value.trim()); });
$("logout").addEventListener("click", () => signOut(""));
$("create-form").addEventListener("submit", create);
$("pause").addEventListener("click", () => askBrake("pause"));
$("resume").addEventListener("click", () => askBrake("resume"));
$("confirm-yes").addEventListener("click", confirmBrake);
$("confirm-no").addEventListener("click", cancelBrake);
setInterval(refresh, 1000);
if (token) { signIn(token); }
