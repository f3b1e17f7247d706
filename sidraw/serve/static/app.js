// The page of `sidraw serve`: uploads each chosen file (one request each, so each has its own
// progress and its own error), then polls its jobs once a second while any is waiting or
// running. The polls are what tells the server that the page is still open: a page that stops
// asking (closed, gone) has its waiting jobs cancelled. No framework, no build step: this file is
// served as it is. Names from users are only ever set as text, never as HTML.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const POLL_MS = 1000;
const FINAL = new Set(["done", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);

// One id per browser tab, kept across reloads of the tab so its jobs are found again.
function clientId() {
  let id = sessionStorage.getItem("sidraw-client");
  if (!id) {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("sidraw-client", id);
  }
  return id;
}

const client = clientId();
const rows = new Map(); // job id -> row
let limits = { max_upload: Infinity, keep_minutes: 30 };
let polling = false;

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

function headers() {
  return token ? { "X-Sidraw-Token": token } : {};
}

async function getJson(url) {
  const response = await fetch(withToken(url), { headers: headers() });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function megabytes(bytes) {
  return (bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0) + " MB";
}

// -- rows ------------------------------------------------------------------------------------

function newRow(name) {
  const li = document.createElement("li");
  li.className = "job";
  const title = document.createElement("span");
  title.className = "name";
  title.textContent = name;
  const state = document.createElement("span");
  state.className = "state";
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = 0;
  bar.setAttribute("aria-label", "Progress of " + name);
  const actions = document.createElement("span");
  actions.className = "actions";
  li.append(title, state, bar, actions);
  $("jobs").append(li);
  return { li, state, bar, actions, name, job: null, shown: "" };
}

function setState(row, kind, text, progress) {
  row.li.dataset.state = kind;
  row.state.textContent = text;
  row.bar.hidden = progress === null;
  if (progress !== null) row.bar.value = progress;
}

function describe(job) {
  if (job.state === "queued") return "waiting, number " + job.position + " in line";
  if (job.state === "running") return "converting, " + Math.round(job.progress * 100) + " %";
  if (job.state === "done") return job.ratio_why + ", " + job.seconds.toFixed(1) + " s";
  return job.error || job.state;
}

function addActions(row, job) {
  const download = document.createElement("a");
  download.className = "button";
  download.href = withToken(job.result);
  download.download = job.result_name;
  download.textContent = "Download " + job.result_name;
  row.actions.append(download);
  if (!job.preview) return;
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.textContent = "Before / after";
  toggle.setAttribute("aria-expanded", "false");
  const figure = document.createElement("figure");
  figure.hidden = true;
  const img = document.createElement("img");
  img.alt = "Before (left, only brightened) and after (right, sidraw) of " + row.name;
  const caption = document.createElement("figcaption");
  caption.textContent = "Left: only brightened. Right: sidraw.";
  figure.append(img, caption);
  toggle.addEventListener("click", () => {
    if (!img.src) img.src = withToken(job.preview);
    figure.hidden = !figure.hidden;
    toggle.setAttribute("aria-expanded", String(!figure.hidden));
  });
  row.actions.append(toggle);
  row.li.append(figure);
}

function showJob(row, job) {
  row.job = job;
  const progress = job.state === "running" ? job.progress : FINAL.has(job.state) ? null : 0;
  setState(row, job.state, describe(job), progress);
  if (job.state === "done" && row.shown !== "done") addActions(row, job);
  row.shown = job.state;
}

function summarise() {
  const jobs = Array.from(rows.values(), (r) => r.job).filter(Boolean);
  const count = (s) => jobs.filter((j) => j.state === s).length;
  const done = jobs.filter((j) => j.state === "done");
  const parts = [count("done") + " converted", count("failed") + " failed"];
  const waiting = count("queued") + count("running");
  if (waiting) parts.push(waiting + " to go");
  $("summary").textContent = jobs.length ? parts.join(", ") + "." : "Nothing converted yet.";
  const zip = $("zip");
  zip.hidden = done.length === 0;
  zip.href = withToken("/api/results.zip?ids=" + done.map((j) => j.id).join(","));
}

// -- uploads ---------------------------------------------------------------------------------

// The options as chosen now: files keep the options of the click that sent them.
function chosenOptions() {
  const options = { format: $("format").value, color_space: $("color_space").value };
  const mode = document.querySelector("input[name=mode]:checked").value;
  if (mode === "ratio") options.ratio = $("ratio").value;
  if (mode === "target") options.target_exposure = $("target").value;
  return options;
}

function formFor(file, options) {
  const form = new FormData();
  form.append("client", client);
  for (const [key, value] of Object.entries(options)) form.append(key, value);
  form.append("files", file, file.name);
  return form;
}

function upload(file, row, options) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", withToken("/api/jobs"));
    if (token) xhr.setRequestHeader("X-Sidraw-Token", token);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        const share = e.loaded / e.total;
        setState(row, "uploading", "uploading, " + Math.round(share * 100) + " %", share);
      }
    };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON: said below */ }
      if (xhr.status === 202 && body.jobs) {
        const job = body.jobs[0];
        rows.set(job.id, row);
        showJob(row, job);
      } else {
        setState(row, "failed", body.error || "upload refused (" + xhr.status + ")", null);
      }
      resolve();
    };
    xhr.onerror = () => {
      setState(row, "failed", "upload failed: the server cannot be reached", null);
      resolve();
    };
    xhr.send(formFor(file, options));
  });
}

function checkOptions() {
  const mode = document.querySelector("input[name=mode]:checked").value;
  const field = mode === "ratio" ? $("ratio") : mode === "target" ? $("target") : null;
  if (field && !(Number(field.value) > 0)) {
    field.focus();
    return "Give a number above zero.";
  }
  return "";
}

async function convert(event) {
  event.preventDefault();
  const files = Array.from($("files").files);
  const problem = files.length ? checkOptions() : "Choose one or more raw files first.";
  $("message").textContent = problem;
  if (problem) return;
  const options = chosenOptions();
  const pending = files.map((file) => [file, newRow(file.name)]);
  for (const [file, row] of pending) setState(row, "uploading", "waiting to upload", 0);
  $("files").value = ""; // the options stay as chosen for the next files
  $("picked").textContent = "No files chosen.";
  for (const [file, row] of pending) {
    if (file.size > limits.max_upload) {
      setState(row, "failed", "larger than this server's limit of " +
        megabytes(limits.max_upload), null);
      continue;
    }
    await upload(file, row, options);
    poll();
  }
  summarise();
}

// -- polling ---------------------------------------------------------------------------------

async function poll() {
  if (polling) return;
  polling = true;
  try {
    for (;;) {
      const body = await getJson("/api/jobs?client=" + client);
      for (const job of body.jobs) {
        let row = rows.get(job.id);
        if (!row) { row = newRow(job.name); rows.set(job.id, row); }
        showJob(row, job);
      }
      summarise();
      if (!body.jobs.some((j) => !FINAL.has(j.state))) break;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  } catch (err) {
    $("message").textContent = "Lost the server: " + err.message;
  } finally {
    polling = false;
  }
}

// -- set-up ----------------------------------------------------------------------------------

function pickedText(files) {
  if (!files.length) return "No files chosen.";
  const size = Array.from(files).reduce((sum, f) => sum + f.size, 0);
  return files.length + (files.length === 1 ? " file" : " files") + ", " + megabytes(size);
}

function setUpDrop() {
  const drop = $("drop");
  const input = $("files");
  input.addEventListener("change", () => { $("picked").textContent = pickedText(input.files); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    input.files = e.dataTransfer.files;
    $("picked").textContent = pickedText(input.files);
  });
}

async function start() {
  setUpDrop();
  $("form").addEventListener("submit", convert);
  try {
    limits = await getJson("/api/config");
    $("footer").textContent = "sidraw " + limits.version + " · at most " +
      megabytes(limits.max_upload) + " a file · results are deleted after their download, or " +
      limits.keep_minutes + " minutes after they are ready";
  } catch (err) {
    $("message").textContent = "This sidraw server does not answer: " + err.message;
    return;
  }
  poll(); // jobs of this tab from before a reload
}

start();
