// Live memory activity: the server replays from our cursor, then streams new events.
(function () {
  const list = document.getElementById("live");
  if (!list) return;
  let cursor = 0;
  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}${list.dataset.ws}?cursor=${cursor}`);
    ws.onmessage = (msg) => {
      const ev = JSON.parse(msg.data);
      if (ev.type !== "event") return;
      cursor = Math.max(cursor, ev.seq);
      const muted = list.querySelector(".muted");
      if (muted) muted.remove();
      const li = document.createElement("li");
      li.textContent = `${ev.at.slice(0, 19).replace("T", " ")} · ${ev.actor} · ${ev.operation} · ${ev.namespace} (${ev.count})`;
      list.prepend(li);
      while (list.children.length > 20) list.lastChild.remove();
    };
    ws.onclose = () => setTimeout(connect, 2000);
  }
  connect();
})();
