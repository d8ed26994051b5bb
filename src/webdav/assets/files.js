// The Files view's changes, each one of the gateway's own WebDAV requests
// (MKCOL, PUT, MOVE, DELETE), so the page has no write path of its own.
// Without this script the page still browses and downloads.
(() => {
  "use strict";
  if (document.body.dataset.writes !== "yes") return;
  const here = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const status = document.getElementById("status");
  const say = (text, bad) => {
    status.textContent = text;
    status.className = bad ? "err" : "muted";
  };
  const encodePath = (p) => p.split("/").map(encodeURIComponent).join("/");
  // One request; its failure names the file and the server's reason.
  const send = async (method, url, headers) => {
    const r = await fetch(url, { method, headers: headers || {}, credentials: "same-origin" });
    if (!r.ok) {
      const why = (await r.text()).trim() || r.statusText;
      throw new Error(`${decodeURIComponent(url)}: ${r.status} ${why}`);
    }
  };
  const reload = () => location.reload();
  const fail = (e) => say(e.message, true);

  document.getElementById("mkdir").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = ev.target.elements.name.value.trim();
    if (!name) return;
    send("MKCOL", here + encodeURIComponent(name) + "/").then(reload, fail);
  });

  // Uploads stream the file from disk (XMLHttpRequest, for its progress);
  // the gateway writes a hidden file and renames it into place only when
  // the body is whole, so a cancelled or broken upload leaves nothing.
  const list = document.getElementById("uploads");
  const upload = (file) =>
    new Promise((done) => {
      const li = document.createElement("li");
      const label = document.createElement("span");
      label.textContent = file.name;
      const bar = document.createElement("progress");
      bar.max = Math.max(file.size, 1);
      bar.value = 0;
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.textContent = "Cancel";
      li.append(label, bar, cancel);
      list.append(li);
      const x = new XMLHttpRequest();
      x.open("PUT", here + encodeURIComponent(file.name));
      x.upload.onprogress = (e) => { bar.value = e.loaded; };
      const end = (ok, why) => {
        cancel.remove();
        li.className = ok ? "done" : "failed";
        if (!ok) label.textContent = `${file.name}: ${why}`;
        done(ok);
      };
      x.onload = () => {
        if (x.status >= 200 && x.status < 300) {
          bar.value = bar.max;
          end(true);
        } else {
          end(false, `${x.status} ${x.responseText.trim() || x.statusText}`);
        }
      };
      x.onerror = () => end(false, "the connection failed");
      x.onabort = () => end(false, "cancelled, nothing kept");
      cancel.addEventListener("click", () => x.abort());
      x.send(file);
    });
  const uploadAll = async (files) => {
    if (!files.length) return;
    say(`Uploading ${files.length} file${files.length > 1 ? "s" : ""}…`);
    let ok = true;
    for (const f of files) ok = (await upload(f)) && ok;
    if (ok) reload();
    else say("Some uploads did not finish; the others are in place.", true);
  };
  const pick = document.getElementById("pick");
  pick.addEventListener("change", () => uploadAll([...pick.files]));
  let depth = 0;
  document.addEventListener("dragenter", (ev) => {
    ev.preventDefault();
    depth++;
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    if (--depth <= 0) document.body.classList.remove("dragging");
  });
  document.addEventListener("dragover", (ev) => ev.preventDefault());
  document.addEventListener("drop", (ev) => {
    ev.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    uploadAll([...(ev.dataTransfer ? ev.dataTransfer.files : [])]);
  });

  // Rename or move: a new name, or a path from here (`../x`) or from the
  // volume's root (`/a/b`). Delete asks first.
  document.querySelector("table.list").addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    if (!b) return;
    const row = b.closest("tr");
    const dir = row.classList.contains("dir");
    const name = decodeURIComponent(row.dataset.name);
    const url = here + row.dataset.name + (dir ? "/" : "");
    if (b.classList.contains("rm")) {
      const what = dir ? `the folder ${name} and everything in it` : name;
      if (confirm(`Delete ${what}?`)) send("DELETE", url).then(reload, fail);
    } else if (b.classList.contains("mv")) {
      const cell = row.querySelector("td.act");
      const form = document.createElement("form");
      const to = document.createElement("input");
      to.className = "to";
      to.value = name;
      to.setAttribute("aria-label", `new name or path for ${name}`);
      const go = document.createElement("button");
      go.type = "submit";
      go.textContent = "Move";
      form.append(to, go);
      cell.replaceChildren(form);
      to.focus();
      to.select();
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        const dest = to.value.trim();
        if (!dest || dest === name) return reload();
        const target = dest.startsWith("/")
          ? "/dav" + encodePath(dest)
          : new URL(encodePath(dest), location.origin + here).pathname;
        const headers = { Destination: location.origin + target + (dir ? "/" : ""), Overwrite: "F" };
        send("MOVE", url, headers).then(reload, fail);
      });
    }
  });
})();
