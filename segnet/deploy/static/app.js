// The SegNet demo page: send an image to /v1/segment?format=page, show the photo, the overlay and the legend.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
let busy = false;

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadModel() {
  const answer = await fetch("/v1/model");
  model = await answer.json();
  $("model").textContent = `${model.name} · ${model.label_space} (${model.classes.length} classes) · ` +
    `input ${model.input_size.join("×")} · ${model.device} ${model.precision}`;
  if (model.bayesian && model.mc_samples_max > 0) {
    $("samples").max = String(model.mc_samples_max);
    $("sampling").hidden = false;
  }
}

async function segment(blob, name) {
  if (busy) return;
  busy = true;
  say(`segmenting ${name}…`);
  const samples = model && model.bayesian ? Number($("samples").value) : 0;
  try {
    const answer = await fetch(`/v1/segment?format=page&samples=${samples}`, {
      method: "POST", body: blob, headers: {"Content-Type": blob.type || "application/octet-stream"},
    });
    const result = await answer.json();
    if (!answer.ok) {
      say(`${name}: ${result.error || answer.statusText}`, true);
      return;
    }
    show(result, name);
  } catch (failure) {
    say(`${name}: ${failure}`, true);
  } finally {
    busy = false;
  }
}

function show(result, name) {
  $("photo").src = result.photo;
  $("overlay").src = result.mask;
  $("download").href = result.labels;
  $("download").download = name.replace(/\.[^.]*$/, "") + "_segmentation.png";
  legend(result.classes, result.void_share);
  const batch = result.batch_size > 1 ? ` (a batch of ${result.batch_size})` : "";
  const sampled = result.mc_samples ? `, ${result.mc_samples} Monte-Carlo samples` : "";
  $("timing").textContent = `inference ${result.inference_ms.toFixed(0)} ms${batch}${sampled}, ` +
    `${result.total_ms.toFixed(0)} ms in all, on ${result.device} (${result.precision}); ` +
    `${result.width}×${result.height} pixels`;
  $("uncertainty-box").hidden = !result.uncertainty;
  if (result.uncertainty) $("uncertainty").src = result.uncertainty;
  $("result").hidden = false;
  say(`${name}: done`);
}

function legend(classes, voidShare) {
  const list = $("legend");
  list.replaceChildren();
  for (const c of classes) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${c.colour.join(",")})`;
    const label = document.createElement("span");
    label.textContent = c.name;
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = `${(100 * c.share).toFixed(1)}%`;
    item.append(swatch, label, share);
    list.append(item);
  }
  if (voidShare > 0.0005) {
    const item = document.createElement("li");
    item.textContent = `unlabelled ${(100 * voidShare).toFixed(1)}%`;
    list.append(item);
  }
}

function setOpacity() {
  $("overlay").style.opacity = String(Number($("opacity").value) / 100);
  $("opacity-value").textContent = `${$("opacity").value}%`;
}

function wire() {
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) segment(file, file.name);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) segment(file, file.name);
  });
  for (const button of document.querySelectorAll("#examples button")) {
    button.addEventListener("click", async () => {
      const src = button.dataset.src;
      $("file").value = "";
      const blob = await (await fetch(src)).blob();
      segment(blob, src.split("/").pop());
    });
  }
  $("opacity").addEventListener("input", setOpacity);
  $("samples").addEventListener("input", () => { $("samples-value").textContent = $("samples").value; });
  setOpacity();
}

wire();
loadModel().catch((failure) => say(`cannot reach the server: ${failure}`, true));
