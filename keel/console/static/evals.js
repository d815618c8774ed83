// Evals pages: a uPlot chart per suite (mean score per variant · grader over its runs), drawn
// from the JSON next to it; the same numbers are in the data table below each chart. The
// runs list's Compare button works without this script (a GET form with two checkboxes).
"use strict";

(function () {
  const COLOURS = ["#0b5cad", "#c62828", "#1a7f37", "#9a6700", "#6f42c1", "#00838f", "#d81b60"];

  function draw(el) {
    const source = document.getElementById(el.dataset.chart);
    if (!source || typeof uPlot === "undefined") return;
    const data = JSON.parse(source.textContent);
    if (!data.x.length) return;
    const series = [{ label: "run time" }].concat(data.series.map(function (name, i) {
      return { label: name, stroke: COLOURS[i % COLOURS.length], width: 2,
               points: { show: true, size: 6 }, spanGaps: true,
               value: function (u, v) { return v == null ? "—" : v.toFixed(3); } };
    }));
    const top = Math.max.apply(null, data.y.flat().filter(function (v) { return v != null; }).concat([0]));
    const width = function () { return Math.max(280, el.clientWidth); };
    const plot = new uPlot({
      width: width(), height: 240, series: series,
      scales: { y: top <= 1 ? { range: [0, 1.05] } : {} },
      axes: [{}, { label: "mean score" }],
    }, [data.x].concat(data.y), el);
    window.addEventListener("resize", function () { plot.setSize({ width: width(), height: 240 }); });
  }

  function init() {
    document.querySelectorAll(".evals-chart[data-chart]").forEach(draw);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
