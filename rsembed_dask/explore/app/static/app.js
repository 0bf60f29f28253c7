// rsembed_dask explorer: the page. Talks only to this server's /api (see docs/guide/explorer.md).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { info: null, scale: null, time: null, labels: new Map(), predictions: null };
  const map = L.map("map", { zoomControl: true, preferCanvas: false });
  for (const [name, z] of [["predictions", 450], ["labels", 460], ["similar", 470]]) {
    map.createPane(name).style.zIndex = z;
  }
  const placesRenderer = L.canvas({ padding: 0.2 });
  const predictRenderer = L.canvas({ pane: "predictions", padding: 0.2 });
  const layers = {
    places: L.layerGroup().addTo(map),
    predictions: L.layerGroup().addTo(map),
    labels: L.layerGroup().addTo(map),
    similar: L.layerGroup().addTo(map),
  };
  window.explorer = { map, state, layers };

  function status(text) { $("status").textContent = text || ""; }

  async function api(path, options) {
    const r = await fetch(path, options);
    const type = r.headers.get("content-type") || "";
    const body = type.includes("json") ? await r.json() : await r.text();
    if (!r.ok) {
      const msg = (body && body.error) || ("HTTP " + r.status);
      status(msg);
      throw new Error(msg);
    }
    status("");
    return body;
  }

  function where() {
    const q = new URLSearchParams({ scale: state.scale });
    if (state.time) q.set("time", state.time);
    return q;
  }

  function fmt(score, digits) { return Number(score).toFixed(digits || 4); }

  function scoreColour(t) {  // 0..1 -> yellow..dark red
    const r = Math.round(255 - 80 * t), g = Math.round(220 * (1 - t) + 20), b = Math.round(60 * (1 - t));
    return `rgb(${r},${g},${b})`;
  }

  async function loadPlaces() {
    layers.places.clearLayers();
    if (state.info.kind === "tiling") {
      const ov = await api("/api/overlays?" + where());
      for (const o of ov.overlays) {
        L.imageOverlay(o.url, o.bounds, { opacity: 0.9, interactive: false, className: "zone-overlay" })
          .addTo(layers.places);
      }
    }
    const p = await api("/api/places?" + where());
    if (state.info.kind !== "tiling") {
      for (let i = 0; i < p.lon.length; i++) {
        L.circleMarker([p.lat[i], p.lon[i]], {
          renderer: placesRenderer, radius: 5, weight: 0.6, color: "#333", fillColor: p.rgb[i],
          fillOpacity: 0.95, interactive: false,
        }).addTo(layers.places);
      }
    }
    $("title").textContent = `${state.info.name}: ${p.total} places at ${state.scale} m` +
      (p.shown < p.total ? ` (${p.shown} drawn)` : "");
  }

  function showSimilar(fc) {
    layers.similar.clearLayers();
    const list = $("results");
    list.innerHTML = "";
    L.geoJSON(fc, {
      pane: "similar",
      style: (f) => ({ color: f.properties.query ? "#111" : "#e67e22", weight: 3, fill: false }),
      pointToLayer: (f, latlng) => L.circleMarker(latlng, {
        pane: "similar", radius: f.properties.query ? 11 : 9, color: f.properties.query ? "#111" : "#e67e22",
        weight: 3, fill: false,
      }),
      onEachFeature: (f, layer) => {
        if (!f.properties.query) {
          layer.bindTooltip(String(f.properties.rank), { permanent: true, direction: "center",
                                                          className: "rank-label", pane: "similar" });
        }
      },
    }).addTo(layers.similar);
    for (const f of fc.features) {
      const p = f.properties;
      const li = document.createElement("li");
      li.className = p.query ? "query" : "";
      li.dataset.id = p.id; li.dataset.score = p.score; li.dataset.query = p.query ? "1" : "0";
      li.dataset.lon = p.lon; li.dataset.lat = p.lat;
      li.innerHTML = `<span>${p.query ? "query" : p.rank + "."} ${escapeHtml(String(p.id))}</span>` +
        `<span class="score">${fmt(p.score, 6)}</span>`;
      li.onclick = () => map.panTo([p.lat, p.lon]);
      list.appendChild(li);
    }
    $("query").textContent = `query ${fc.query.id} (${Math.round(fc.query.distance_m)} m from the click), ` +
      `cosine similarity, ${fc.took_ms} ms`;
  }

  function escapeHtml(s) {
    return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  function drawLabels(fc) {
    layers.labels.clearLayers();
    for (const f of fc.features) {
      const p = f.properties;
      L.circleMarker([p.lat, p.lon], {
        pane: "labels", radius: 7, weight: 2, color: "#fff",
        fillColor: p.label === "positive" ? "#1a7f37" : "#c0392b", fillOpacity: 1, interactive: false,
      }).addTo(layers.labels);
    }
    $("label-counts").textContent = `${fc.positives} + / ${fc.negatives} \u2212`;
  }

  async function putLabels() {
    const labels = [...state.labels.values()].map((l) => ({ id: l.id, label: l.label }));
    const body = { scale: state.scale, time: state.time, labels };
    const fc = await api("/api/labels", { method: "PUT", headers: { "content-type": "application/json" },
                                           body: JSON.stringify(body) });
    drawLabels(fc);
  }

  function drawPredictions() {
    layers.predictions.clearLayers();
    const pr = state.predictions;
    if (!pr) return;
    const t = Number($("threshold").value);
    const lo = pr.score[pr.score.length - 1], hi = pr.score[0];
    let shown = 0;
    for (let i = 0; i < pr.score.length && pr.score[i] >= t; i++) {
      const u = hi > lo ? (pr.score[i] - lo) / (hi - lo) : 1;
      L.circleMarker([pr.lat[i], pr.lon[i]], {
        renderer: predictRenderer, radius: 7, weight: 1.5, color: "#5a0000", fillColor: scoreColour(u),
        fillOpacity: 0.85, interactive: false,
      }).addTo(layers.predictions);
      shown++;
    }
    $("threshold-value").textContent = fmt(t);
    $("predict-count").textContent = `${shown} of ${pr.places} places score \u2265 ${fmt(t)} ` +
      `(${pr.positives} +, ${pr.negatives} \u2212)`;
  }

  async function predict() {
    const pr = await api("/api/predict?format=columns&limit=" + state.info.limits.places_shown);
    state.predictions = pr;
    const slider = $("threshold");
    slider.min = pr.score[pr.score.length - 1];
    slider.max = pr.score[0];
    slider.value = pr.score[Math.min(19, pr.score.length - 1)];  // the top 20 at first
    slider.disabled = false;
    $("predict-method").textContent = "(" + pr.method.replace("_", " ") + ")";
    const list = $("predictions");
    list.innerHTML = "";
    for (let i = 0; i < Math.min(50, pr.ids.length); i++) {
      const li = document.createElement("li");
      li.className = pr.label[i] || "";
      li.dataset.id = pr.ids[i]; li.dataset.score = pr.score[i]; li.dataset.label = pr.label[i] || "";
      li.innerHTML = `<span>${i + 1}. ${escapeHtml(String(pr.ids[i]))}</span><span class="score">${fmt(pr.score[i])}</span>`;
      const at = [pr.lat[i], pr.lon[i]];
      li.onclick = () => map.panTo(at);
      list.appendChild(li);
    }
    drawPredictions();
  }

  async function onClick(e) {
    const mode = document.querySelector("input[name=mode]:checked").value;
    const lon = ((e.latlng.lng + 540) % 360) - 180, lat = e.latlng.lat;
    const q = where();
    q.set("lon", lon.toFixed(7)); q.set("lat", lat.toFixed(7));
    if (mode === "similar") {
      q.set("k", $("k").value);
      showSimilar(await api("/api/similar?" + q));
    } else {
      const f = await api("/api/nearest?" + q);
      const p = f.properties;
      state.labels.set(String(p.id), { id: p.id, label: mode, lon: p.lon, lat: p.lat });
      await putLabels();
    }
  }

  async function changeWhere() {
    state.scale = Number($("scale").value);
    state.time = state.info.windows.length ? $("window").value : null;
    state.labels.clear();
    state.predictions = null;
    layers.similar.clearLayers(); layers.predictions.clearLayers();
    $("results").innerHTML = ""; $("predictions").innerHTML = "";
    await putLabels();
    await loadPlaces();
  }

  async function start() {
    const info = await api("/api/info");
    state.info = info;
    if (info.basemap) {
      L.tileLayer(info.basemap, { maxZoom: 19, attribution: "basemap: " + escapeHtml(info.basemap) }).addTo(map);
    }
    for (const s of info.scales) $("scale").add(new Option(`${s} m`, s));
    if (info.windows.length) {
      $("window-box").hidden = false;
      for (const w of info.windows) $("window").add(new Option(w.end ? `${w.start} \u2013 ${w.end}` : w.start, w.start));
    }
    $("k").max = info.limits.k;
    state.scale = info.scales[0];
    state.time = info.windows.length ? info.windows[0].start : null;
    const [w, s, e, n] = info.bounds;
    map.fitBounds([[s, w], [n, e]], { padding: [20, 20] });
    $("scale").onchange = changeWhere;
    $("window").onchange = changeWhere;
    $("predict").onclick = () => predict().catch(() => {});
    $("clear").onclick = () => { state.labels.clear(); putLabels().catch(() => {}); };
    $("threshold").oninput = drawPredictions;
    map.on("click", (e) => onClick(e).catch(() => {}));
    await loadPlaces();
    document.body.dataset.ready = "1";
  }

  start().catch((err) => status("could not start: " + err.message));
})();
