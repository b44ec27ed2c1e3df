// spendstream dashboard: refresh the live parts without reloading the page.
// Every [data-live] section is fetched again from /dashboard/part?part=NAME (with the
// page's own query string) every data-refresh seconds and swapped in. The figures are
// rendered by the server from exact decimals; this script does no arithmetic on them.
"use strict";

(function () {
  const main = document.querySelector("main[data-refresh]");
  if (!main) return;
  const every = Math.max(0.5, Number(main.dataset.refresh) || 2) * 1000;
  const updated = document.getElementById("updated");

  async function refresh(section) {
    const query = new URLSearchParams(window.location.search);
    query.set("part", section.dataset.part);
    // A request that hangs must not stop the refreshes: give up on it after a while.
    const response = await fetch("/dashboard/part?" + query.toString(),
      {credentials: "same-origin", signal: AbortSignal.timeout(Math.max(10000, 5 * every))});
    if (response.status === 401) {
      window.location.assign("/dashboard/login");
      return;
    }
    if (!response.ok) return;
    const body = section.querySelector(".body");
    const open = new Set([...body.querySelectorAll("details[open]")].map((d) => d.id));
    body.innerHTML = await response.text();
    open.forEach((id) => { const d = document.getElementById(id); if (d) d.open = true; });
  }

  async function tick() {
    try {
      await Promise.all([...document.querySelectorAll("section[data-live]")].map(refresh));
      if (updated) updated.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (updated) updated.textContent = "not updated: " + error;
    } finally {
      window.setTimeout(tick, every);
    }
  }

  // A figure links to the SQL behind it: open that statement's block.
  function openLinked() {
    const target = window.location.hash && document.getElementById(window.location.hash.slice(1));
    if (target && target.tagName === "DETAILS") target.open = true;
  }
  window.addEventListener("hashchange", openLinked);
  openLinked();
  window.setTimeout(tick, every);
})();
