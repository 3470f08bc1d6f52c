/**
 * The self-refreshing HTML page a browser gets from the status route, in the spirit of
 * HAProxy's stats page (the JSON it shows is described by StatusSchema, in contracts.ts).
 */

/** The HTML page: static, with the data fetched as JSON from the same URL every two seconds. */
export function statusPage (title = 'fastify-upstream status'): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title>
<style>
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d2330; background: #f6f7f9; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  .meta { color: #5b6475; margin-bottom: 20px; }
  h2 { font-size: 16px; margin: 24px 0 8px; }
  h2 small { font-weight: normal; color: #5b6475; margin-left: 8px; }
  table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
  th, td { padding: 6px 10px; border-bottom: 1px solid #e4e7ec; text-align: right; white-space: nowrap; }
  th { background: #2d3748; color: #fff; font-weight: 600; }
  th:first-child, td:first-child { text-align: left; }
  td.state { font-weight: 600; text-align: center; }
  tr.healthy td.state { background: #c6f6d5; color: #22543d; }
  tr.unhealthy td.state { background: #fed7d7; color: #822727; }
  tr.ejected td.state { background: #feebc8; color: #7b341e; }
  tr.draining td.state { background: #bee3f8; color: #2a4365; }
  tr.disabled td.state { background: #e2e8f0; color: #4a5568; }
  .panic { color: #c53030; font-weight: 700; }
  .error { color: #c53030; }
</style>
</head>
<body>
<h1>${title}</h1>
<div class="meta" id="meta">loading…</div>
<div id="pools"></div>
<div id="splits"></div>
<script>
(function () {
  var columns = ['url', 'state', 'weight', 'effectiveWeight', 'backup', 'inflight', 'websockets', 'requests', 'failures', 'retries', 'ejections', 'latency'];
  var titles = ['target', 'state', 'weight', 'effective', 'backup', 'in flight', 'websockets', 'requests', 'failures', 'retries', 'ejections', 'latency (ms)'];
  function text (value) {
    return String(value).replace(/[&<>"']/g, function (c) { return '&#' + c.charCodeAt(0) + ';'; });
  }
  function render (data) {
    var html = '';
    Object.keys(data.pools).forEach(function (name) {
      var pool = data.pools[name];
      html += '<h2 data-pool="' + text(name) + '">' + text(name) + '<small>' + text(pool.balancer) + ' · ' + pool.available + ' of ' + pool.targets.length + ' available' +
        (pool.panic ? ' · <span class="panic">PANIC</span>' : '') + '</small></h2>';
      html += '<table><thead><tr>' + titles.map(function (t) { return '<th>' + t + '</th>'; }).join('') + '</tr></thead><tbody>';
      pool.targets.forEach(function (target) {
        html += '<tr class="' + text(target.state) + '" data-url="' + text(target.url) + '">' + columns.map(function (c) {
          var value = target[c];
          if (c === 'latency') value = value.toFixed(1);
          if (c === 'effectiveWeight') value = Math.round(value * 100) / 100;
          if (c === 'backup') value = value ? 'yes' : '';
          return '<td' + (c === 'state' ? ' class="state"' : '') + '>' + text(value) + '</td>';
        }).join('') + '</tr>';
      });
      html += '</tbody></table>';
    });
    document.getElementById('pools').innerHTML = html || '<p>No pools.</p>';
    var splits = '';
    Object.keys(data.splits || {}).forEach(function (name) {
      var split = data.splits[name];
      splits += '<h2 data-split="' + text(name) + '">split ' + text(name) + '<small>' + (split.sticky ? 'sticky by client' : 'by weight') +
        (split.fallback ? ' · falls back' : ' · no fallback') + '</small></h2>';
      splits += '<table><thead><tr><th>pool</th><th>chosen by</th><th>weight</th><th>share (%)</th><th>requests</th><th>fallbacks</th></tr></thead><tbody>';
      split.branches.forEach(function (branch) {
        splits += '<tr data-pool="' + text(branch.pool) + '"><td>' + text(branch.pool) + '</td><td>' + (branch.match ? 'rules' : 'weight') + '</td><td>' +
          (branch.match ? '' : text(branch.weight)) + '</td><td>' + (branch.match ? '' : text(branch.share)) + '</td><td>' + text(branch.requests) + '</td><td>' + text(branch.fallbacks) + '</td></tr>';
      });
      splits += '</tbody></table>';
    });
    document.getElementById('splits').innerHTML = splits;
    document.getElementById('meta').textContent = 'updated ' + new Date().toLocaleTimeString() + ' · refreshes every 2 s';
  }
  function refresh () {
    fetch(location.pathname, { headers: { accept: 'application/json' }, credentials: 'same-origin' })
      .then(function (res) { if (!res.ok) throw new Error('HTTP ' + res.status); return res.json(); })
      .then(render)
      .catch(function (error) { document.getElementById('meta').innerHTML = '<span class="error">' + text(error.message) + '</span>'; })
      .then(function () { setTimeout(refresh, 2000); });
  }
  refresh();
})();
</script>
</body>
</html>
`
}
