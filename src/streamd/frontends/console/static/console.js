// streamd console: live updates (Server-Sent Events) and charts (uPlot). No build step.
//
// A page whose <main> has data-events opens that event stream. Each "update" event carries
// {"html": {id: html}, "charts": {id: data}, "append": {id: html}}: fragments replace the
// element with that id (focus is kept when it was inside), charts get new data, appended rows
// go at the end of their table body (the newest TAIL_ROWS_MAX are kept).
(function () {
  "use strict";
  var TAIL_ROWS_MAX = 500;
  var PALETTE = ["#2f6fd6", "#d6572f", "#2f9e5a", "#9b4dca", "#c99a06", "#0c8ea6",
                 "#c2366b", "#6b7a00", "#5b5b5b"];
  var charts = {};

  function textColor() {
    return getComputedStyle(document.body).color || "#222";
  }

  function seriesOf(data) {
    var series = [{}];
    (data.labels || []).forEach(function (label, i) {
      series.push({ label: label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: false });
    });
    return series;
  }

  function rows(data) {
    return [data.x || []].concat(data.ys || []);
  }

  function eventMarks(u) {
    var events = u._streamdEvents || [];
    if (!events.length) return;
    var ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#d6572f";
    ctx.setLineDash([4, 4]);
    ctx.lineWidth = 1;
    events.forEach(function (e) {
      var x = u.valToPos(e.t, "x", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    });
    ctx.restore();
  }

  function makeChart(el) {
    if (typeof uPlot === "undefined") return;
    var data = JSON.parse(el.getAttribute("data-chart") || "{}");
    var color = textColor();
    var axis = { stroke: color, grid: { stroke: "rgba(128,128,128,0.25)" } };
    var opts = {
      width: Math.max(300, el.clientWidth || 600),
      height: 220,
      series: seriesOf(data),
      axes: [axis, Object.assign({ label: el.getAttribute("data-unit") || "" }, axis)],
      scales: { x: { time: true } },
      legend: { show: true },
      hooks: { draw: [eventMarks] }
    };
    el.innerHTML = "";
    var u = new uPlot(opts, rows(data), el);
    u._streamdEvents = data.events || [];
    u._streamdLabels = (data.labels || []).join("\u0000");
    el.setAttribute("data-points", String((data.x || []).length));
    charts[el.id] = u;
  }

  function updateChart(id, data) {
    var el = document.getElementById(id);
    if (!el) return;
    el.setAttribute("data-chart", JSON.stringify(data));
    var u = charts[id];
    if (!u || u._streamdLabels !== (data.labels || []).join("\u0000")) {
      if (u) u.destroy();
      makeChart(el);
      return;
    }
    u._streamdEvents = data.events || [];
    u.setData(rows(data));
    el.setAttribute("data-points", String((data.x || []).length));
  }

  function swap(id, html) {
    var el = document.getElementById(id);
    if (!el) return;
    var active = document.activeElement;
    var focusId = active && el.contains(active) ? active.id : null;
    var box = document.createElement("div");
    box.innerHTML = html;
    var fresh = box.firstElementChild;
    if (!fresh) return;
    el.replaceWith(fresh);
    if (window.htmx) window.htmx.process(fresh);
    fresh.querySelectorAll(".plot[data-chart]").forEach(makeChart);
    if (focusId) {
      var again = document.getElementById(focusId);
      if (again) again.focus();
    }
  }

  function append(id, html) {
    var body = document.getElementById(id);
    if (!body) return;
    var empty = body.querySelector("td.empty");
    if (empty) empty.parentNode.remove();
    body.insertAdjacentHTML("beforeend", html);
    while (body.rows.length > TAIL_ROWS_MAX) body.deleteRow(0);
  }

  function setStatus(text) {
    var el = document.getElementById("live-status");
    if (el) el.textContent = text;
  }

  function connect(url) {
    var source = new EventSource(url);
    source.addEventListener("open", function () { setStatus("live"); });
    source.addEventListener("error", function () { setStatus("reconnecting…"); });
    source.addEventListener("update", function (event) {
      var update = JSON.parse(event.data);
      Object.keys(update.html || {}).forEach(function (id) { swap(id, update.html[id]); });
      Object.keys(update.charts || {}).forEach(function (id) { updateChart(id, update.charts[id]); });
      Object.keys(update.append || {}).forEach(function (id) { append(id, update.append[id]); });
      document.body.setAttribute("data-updates",
        String(Number(document.body.getAttribute("data-updates") || "0") + 1));
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".plot[data-chart]").forEach(makeChart);
    var main = document.getElementById("main");
    var url = main && main.getAttribute("data-events");
    if (url && window.EventSource) connect(url);
    document.body.addEventListener("click", function (event) {
      var cancel = event.target.closest && event.target.closest(".confirm .cancel");
      if (!cancel) return;
      event.preventDefault();
      var box = cancel.closest(".confirm");
      box.parentNode.removeChild(box);
    });
    document.body.addEventListener("htmx:afterSwap", function (event) {
      var focus = event.detail.target.querySelector("[autofocus]");
      if (focus) focus.focus();
    });
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (id) {
        var el = document.getElementById(id);
        if (el) charts[id].setSize({ width: Math.max(300, el.clientWidth), height: 220 });
      });
    });
  });
})();
