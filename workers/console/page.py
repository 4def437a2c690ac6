# ruff: noqa: E501  (an embedded HTML/JS asset, kept as written)
"""The console's one page: HTML, CSS and a small script (no build step, no CDN, offline).

The script polls the JSON endpoints every ``__REFRESH_MS__`` ms and redraws each panel;
charts are inline SVG drawn here. Every value is inserted as text (``textContent``), never
as HTML, so nothing a record carries can script the page.
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>coexist — cutover console</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
 header{background:#1d232b;color:#fff;padding:10px 18px;display:flex;gap:18px;align-items:center}
 header h1{font-size:17px;margin:0} #overall{font-weight:600;padding:3px 10px;border-radius:4px}
 .ok{background:#1f8f4e;color:#fff}.bad{background:#c0392b;color:#fff}.unk{background:#888;color:#fff}
 main{display:grid;grid-template-columns:1fr 1fr;gap:14px;padding:14px}
 section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 14px;overflow:auto}
 section.wide{grid-column:1/3} h2{font-size:15px;margin:2px 0 8px}
 table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:3px 6px;border-bottom:1px solid #eef0f2;vertical-align:top}
 th{font-weight:600;color:#4a5562} td.num{text-align:right}
 .chip{display:inline-block;margin:1px 3px 1px 0;padding:1px 6px;border-radius:3px;font-size:12px}
 .chip.pass{background:#d8f3e3;color:#145c33}.chip.fail{background:#fbdcd8;color:#8b1f12}
 .reason{font-size:12px;color:#8b1f12} .muted{color:#6b7682;font-size:12px}
 tr.click{cursor:pointer} tr.click:hover{background:#f0f4fa}
 pre{background:#f3f4f6;padding:8px;white-space:pre-wrap;word-break:break-all;font-size:12px}
 #attention li{color:#8b1f12} input{font:inherit;padding:4px 6px;width:22em} button{font:inherit}
 svg{background:#fbfcfd;border:1px solid #eef0f2} .legend span{margin-right:10px;font-size:12px}
</style></head>
<body>
<header><h1>coexist — cutover console</h1><span id="overall" class="unk">loading…</span>
<span class="muted" id="refreshed"></span></header>
<main>
<section class="wide" id="board-section"><h2>Domains</h2>
 <ul id="attention"></ul>
 <table id="board"><thead><tr><th>domain</th><th>mode</th><th>rollout</th><th>flag v</th><th>SoR</th>
 <th>backlog</th><th>open exceptions</th><th>next move: guards</th><th>last reconciliation</th><th>capture lag</th></tr></thead><tbody></tbody></table>
</section>
<section id="exceptions-section"><h2>Exceptions by cause</h2>
 <table id="groups"><thead><tr><th>count</th><th>error</th><th>call site</th><th>domains</th><th>first seen</th><th>last seen</th></tr></thead><tbody></tbody></table>
 <div id="records"></div><div id="detail"></div>
</section>
<section id="trace-section"><h2>Trace</h2>
 <form id="trace-form"><input id="trace-target" placeholder="customer:10042 or a correlation id">
 <button type="submit">trace</button></form>
 <div id="trace-out" class="muted">a record's timeline across every system, as <code>coexist trace</code> shows it</div>
</section>
<section id="charts-section" class="wide"><h2>Drift, backlog, routed changes</h2>
 <div><b>drift % per domain</b> <span class="muted">(stored reconciliation runs)</span><div id="drift-chart"></div></div>
 <div><b>messages held per queue</b> <span class="muted" id="held-note"></span><div id="held-chart"></div></div>
 <div><b>routed changes per minute</b> <span class="muted">(outbox, last 3 h)</span><div id="routed-chart"></div></div>
</section>
<section id="channels-section"><h2>Channels</h2><div id="channels"></div></section>
<section id="kpi-section"><h2>Business KPIs</h2><div id="kpis"></div></section>
</main>
<script>
const REFRESH_MS = __REFRESH_MS__;
const COLORS = ["#1f77b4","#d62728","#2ca02c","#9467bd","#ff7f0e","#17becf","#8c564b","#e377c2","#7f7f7f"];
function el(tag, attrs, ...kids){const e=document.createElement(tag);
 for(const [k,v] of Object.entries(attrs||{})){ if(k==="class") e.className=v; else if(k.startsWith("on")) e.addEventListener(k.slice(2),v); else e.setAttribute(k,v);}
 for(const k of kids){ if(k===null||k===undefined) continue; e.append(k instanceof Node?k:document.createTextNode(String(k)));} return e;}
async function get(path){const r=await fetch(path,{cache:"no-store"}); const body=await r.json();
 if(!r.ok) throw new Error(body.error||("HTTP "+r.status)); return body;}
function td(v,cls){return el("td",cls?{class:cls}:{}, v===null||v===undefined?"–":v);}
function count(obj){return Object.values(obj||{}).reduce((a,b)=>a+b,0);}

async function refreshBoard(){
 const b = await get("/api/board");
 const o=document.getElementById("overall"); o.textContent=b.ok?"all is well":"needs attention ("+b.attention.length+")"; o.className=b.ok?"ok":"bad";
 const ul=document.getElementById("attention"); ul.replaceChildren(...b.attention.map(a=>el("li",{},a)));
 const body=document.querySelector("#board tbody"); body.replaceChildren();
 for(const d of b.domains){
  const guards=el("td",{});
  if(!d.guards){guards.append(el("span",{class:"muted"},"at the last step"));}
  else { guards.append(el("div",{class:"muted"},"→ "+d.next+(d.guards.allowed?" (allowed)":" (refused)")));
   for(const c of d.guards.checks){ guards.append(el("span",{class:"chip "+(c.ok?"pass":"fail"),title:c.detail, "data-check":c.name},c.name));
    if(!c.ok) guards.append(el("div",{class:"reason"},c.name+": "+c.detail)); } }
  const run=d.last_reconciliation;
  const recon=run? (run.drift_pct===null?run.status:(run.drift_pct+"% ("+run.status+")"))+" "+(run.finished_at||""):null;
  const lag=Object.entries(d.capture_lag||{}).map(([s,n])=>s+" "+(n===null?"?":n)).join(", ");
  body.append(el("tr",{"data-domain":d.domain},td(d.domain),td(d.mode),td(d.rollout),td(d.flag_version,"num"),td(d.sor),
   td(d.backlog,"num"),td(count(d.open_exceptions),"num"),guards,td(recon),td(lag)));
 }
}
async function refreshExceptions(){
 const gs = await get("/api/exceptions/groups");
 const body=document.querySelector("#groups tbody"); body.replaceChildren();
 if(!gs.length) body.append(el("tr",{},el("td",{colspan:6,class:"muted"},"no open exception records")));
 for(const g of gs){ body.append(el("tr",{class:"click","data-group":g.group,onclick:()=>showGroup(g.group)},
   td(g.count,"num"),td(g.error_type),td(g.call_site),td(g.domains.join(", ")),td(g.first_failed_at),td(g.last_failed_at))); }
}
async function showGroup(group){
 const rs = await get("/api/exceptions?group="+encodeURIComponent(group));
 const t=el("table",{},el("tr",{},el("th",{},"id"),el("th",{},"domain:key"),el("th",{},"error"),el("th",{},"last failure")));
 for(const r of rs){ t.append(el("tr",{class:"click","data-record":r.id,onclick:()=>showRecord(r.id)},td(r.id,"num"),td((r.domain||"-")+":"+(r.key||"-")),td(r.error_message),td(r.last_failed_at))); }
 document.getElementById("records").replaceChildren(el("h3",{},"group "+group),t);
}
async function showRecord(id){
 const d = await get("/api/exceptions/"+id);
 const box=el("div",{id:"record-detail"},el("h3",{},"exception "+id+" ("+d.status+")"),
   el("div",{},d.error_type+": "+d.error_message),
   el("div",{class:"muted"},"to act on it (copy into a terminal):"),
   el("pre",{},d.commands.join("\n")), el("details",{},el("summary",{},"envelope"),el("pre",{},JSON.stringify(d.envelope,null,2))));
 document.getElementById("detail").replaceChildren(box);
}
async function runTrace(ev){
 ev.preventDefault(); const target=document.getElementById("trace-target").value.trim(); const out=document.getElementById("trace-out");
 if(!target) return; out.replaceChildren("tracing…");
 try{ const t=await get("/api/trace?target="+encodeURIComponent(target));
  const table=el("table",{id:"trace-table"},el("tr",{},el("th",{},"at"),el("th",{},"system"),el("th",{},"what"),el("th",{},"who"),el("th",{},"flag version"),el("th",{},"source")));
  for(const e of t.events){ table.append(el("tr",{},td(e.at),td(e.system),td(e.what),td(e.who),td(e.flag_version,"num"),td(e.source))); }
  const notes=(t.sources||[]).filter(s=>s.state!=="ok").map(s=>s.name+": "+s.state);
  out.replaceChildren(el("div",{class:"muted"},t.events.length+" event(s)"+(notes.length?" — "+notes.join(", "):"")),table);
 }catch(e){ out.replaceChildren(el("span",{class:"reason"},e.message)); }
}
function lineChart(series, opts){
 const W=900,H=opts.h||150,P=30; const all=series.flatMap(s=>s.points);
 const svg=document.createElementNS("http://www.w3.org/2000/svg","svg"); svg.setAttribute("width",W); svg.setAttribute("height",H); svg.setAttribute("viewBox","0 0 "+W+" "+H);
 if(!all.length){ const t=document.createElementNS(svg.namespaceURI,"text"); t.setAttribute("x",10); t.setAttribute("y",20); t.textContent="no data yet"; svg.append(t); return svg;}
 const xs=all.map(p=>p[0]), ys=all.map(p=>p[1]); const x0=Math.min(...xs), x1=Math.max(...xs)||x0+1, y1=Math.max(1e-9,...ys);
 const sx=x=>P+(x1===x0?0:(x-x0)/(x1-x0))*(W-2*P), sy=y=>H-P+ -(y/y1)*(H-2*P);
 const axis=document.createElementNS(svg.namespaceURI,"text"); axis.setAttribute("x",2); axis.setAttribute("y",12); axis.setAttribute("font-size","11"); axis.textContent="max "+(+y1.toFixed(3)); svg.append(axis);
 series.forEach((s,i)=>{ const pl=document.createElementNS(svg.namespaceURI, opts.bars?"g":"polyline");
  if(opts.bars){ for(const [x,y] of s.points){ const r=document.createElementNS(svg.namespaceURI,"rect"); r.setAttribute("x",sx(x)-2); r.setAttribute("y",sy(y)); r.setAttribute("width",4); r.setAttribute("height",H-P-sy(y)); r.setAttribute("fill",COLORS[i%COLORS.length]); pl.append(r);} }
  else { pl.setAttribute("points",s.points.map(p=>sx(p[0])+","+sy(p[1])).join(" ")); pl.setAttribute("fill","none"); pl.setAttribute("stroke",COLORS[i%COLORS.length]); pl.setAttribute("stroke-width","2"); }
  svg.append(pl);
  if(!opts.bars) for(const [x,y] of s.points){ const c=document.createElementNS(svg.namespaceURI,"circle"); c.setAttribute("cx",sx(x)); c.setAttribute("cy",sy(y)); c.setAttribute("r",3); c.setAttribute("fill",COLORS[i%COLORS.length]); svg.append(c);} });
 return svg;
}
function legend(series){return el("div",{class:"legend"},...series.map((s,i)=>el("span",{style:"color:"+COLORS[i%COLORS.length]},"■ "+s.name)));}
async function refreshCharts(){
 const h=await get("/api/history"); const t=s=>Date.parse(s)/1000;
 const drift=Object.entries(h.drift).map(([d,runs])=>({name:d,points:runs.map(r=>[t(r.at),r.drift_pct])}));
 document.getElementById("drift-chart").replaceChildren(lineChart(drift,{}),legend(drift));
 const names=new Set(); h.queues.forEach(s=>Object.keys(s.queues).forEach(n=>names.add(n)));
 const held=[...names].map(n=>({name:n,points:h.queues.filter(s=>s.queues[n]).map(s=>[t(s.at),s.queues[n].held||0])}));
 document.getElementById("held-note").textContent="(sampled by this console every "+h.sample_s+" s since it started: "+h.queues.length+" sample(s))";
 document.getElementById("held-chart").replaceChildren(lineChart(held,{}),legend(held));
 const routed=[{name:"routed",points:h.routed_per_minute.map(m=>[t(m.minute),m.routed])}];
 document.getElementById("routed-chart").replaceChildren(lineChart(routed,{bars:true,h:110}));
}
function kv(obj){ const t=el("table",{}); for(const [k,v] of Object.entries(obj||{})) t.append(el("tr",{},td(k),td(typeof v==="object"&&v!==null?JSON.stringify(v):v))); return t;}
async function refreshChannels(){
 const c=await get("/api/channels"); const box=document.getElementById("channels"); box.replaceChildren();
 const subs=el("table",{},el("tr",{},el("th",{},"subscription"),el("th",{},"domains"),el("th",{},"backlog"),el("th",{},"consumers")));
 for(const s of c.subscriptions) subs.append(el("tr",{"data-subscription":s.name},td(s.name),td(s.domains.join(", ")),td(s.backlog,"num"),td(s.consumers,"num")));
 box.append(subs);
 if(c.crm) box.append(el("h3",{},"CRM"),kv(c.crm));
 if(c.edi) box.append(el("h3",{},"EDI partners"),kv({partners:c.edi.partners.join(", ")||"none configured",...c.edi.problems}));
 if(c.portal) box.append(el("h3",{},"portal endpoints needing attention"), c.portal.length?kv(Object.fromEntries(c.portal.map(n=>[n.customer+" "+n.url,n.state+": "+n.detail]))):el("div",{class:"muted"},"none"));
}
function onboardingTime(t){ return !t?"no CRM onboarding":!t.completed?`none completed in ${t.window_days} days (${t.open} open)`:`median ${t.median_s} s, p95 ${t.p95_s} s over ${t.completed} account(s) in ${t.window_days} days (${t.open} open)`; }
async function refreshKpis(){ const k=await get("/api/kpis"); document.getElementById("kpis").replaceChildren(kv({...k,onboarding_time:onboardingTime(k.onboarding_time)})); }
async function refresh(){
 const parts=[refreshBoard,refreshExceptions,refreshCharts,refreshChannels,refreshKpis];
 const results=await Promise.allSettled(parts.map(f=>f()));
 const failed=results.filter(r=>r.status==="rejected").map(r=>r.reason.message);
 document.getElementById("refreshed").textContent="refreshed "+new Date().toLocaleTimeString()+(failed.length?" — "+failed.join("; "):"");
}
document.getElementById("trace-form").addEventListener("submit",runTrace);
refresh(); setInterval(refresh, REFRESH_MS);
</script></body></html>
"""
