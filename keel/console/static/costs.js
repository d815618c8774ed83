// Costs page: spend and tokens per day by model as uPlot charts, from the page's JSON island
// (#costs-data, written by keel/console/views/costs.py). The tables below the charts carry the
// same numbers, so nothing here is needed to read them.
"use strict";

(function () {
  const island = document.getElementById("costs-data");
  if (!island || typeof uPlot === "undefined") return;
  const data = JSON.parse(island.textContent);
  const palette = ["#0b5cad", "#c2410c", "#1a7f37", "#9333ea", "#b91c1c", "#0e7490",
                   "#a16207", "#be185d", "#4d7c0f", "#475569"];
  const dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  const ink = dark ? "#e6e9ed" : "#1b1f24";
  const grid = dark ? "#2c333b" : "#d8dde3";
  const charts = [];

  function dollars(v) {
    if (v == null) return "—";
    return v >= 100 ? "$" + v.toFixed(2) : "$" + v.toFixed(6).replace(/0{1,4}$/, "");
  }
  function count(v) { return v == null ? "—" : Math.round(v).toLocaleString(); }

  // Whole-number ticks for counts: 1, 2, 5, 10, 20, 50, ...
  const countSteps = [];
  for (let e = 0; e < 13; e++) [1, 2, 5].forEach(m => countSteps.push(m * Math.pow(10, e)));

  /** Stacked bars, one stack a day: each model's bar sits on those of the models before it.
   * uPlot draws series in order, so the tallest (cumulative) series comes first and each
   * lower one is painted over it; the legend shows each model's own value. */
  function draw(elementId, field, format, steps) {
    const el = document.getElementById(elementId);
    if (!el) return;
    const bars = uPlot.paths.bars({ size: [0.7, 48] });
    const running = data.x.map(() => 0);
    const stacked = data.series.map(function (s) {
      const own = s[field];
      const top = own.map((v, i) => (running[i] += v));
      return { label: s.model, own: own, top: top };
    });
    const series = [{ label: "day", value: (u, ts) => ts == null ? "—" : data.days[data.x.indexOf(ts)] }];
    const values = [data.x];
    stacked.forEach(function (s, i) { s.colour = palette[i % palette.length]; });
    stacked.slice().reverse().forEach(function (s) {
      series.push({ label: s.label, stroke: s.colour, fill: s.colour, width: 1, paths: bars,
                    points: { show: false },
                    value: (u, v, si, idx) => idx == null ? "—" : format(s.own[idx]) });
      values.push(s.top);
    });
    // The axis is as wide as its longest label (small spends print many digits).
    const y = { stroke: ink, grid: { stroke: grid }, values: (u, ticks) => ticks.map(format),
                size: (u, values) => 16 + 8 * Math.max(4, ...(values || []).map(v => String(v).length)) };
    if (steps) y.incrs = steps;
    const opts = {
      width: Math.max(280, el.clientWidth), height: 260, series: series,
      tzDate: ts => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      scales: { x: { time: true, range: (u, min, max) => [min - 43200, max + 43200] },
                y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{ stroke: ink, grid: { stroke: grid } }, y],
      legend: { live: true },
    };
    charts.push([el, new uPlot(opts, values, el)]);
  }

  draw("chart-cost", "cost", dollars);
  draw("chart-tokens", "tokens", count, countSteps);

  let pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      charts.forEach(([el, chart]) => chart.setSize({ width: Math.max(280, el.clientWidth), height: 260 }));
    }, 150);
  });
})();
