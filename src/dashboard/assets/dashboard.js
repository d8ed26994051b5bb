// Keeps the dashboard live: every 2 s, fetches the page's <main> again and
// swaps it in. Without this script the page shows the same numbers, as of
// its load.
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main) return;
  async function refresh() {
    try {
      const r = await fetch("?part=main", { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) throw new Error(r.status);
      main.innerHTML = await r.text();
      document.body.dataset.live = "yes";
    } catch (e) {
      // The daemon stopped, or the network went: say so, keep trying.
      document.body.dataset.live = "no";
    }
    setTimeout(refresh, 2000);
  }
  refresh();
})();
