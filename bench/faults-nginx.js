'use strict'

// NGINX in front of the fault benchmark's upstreams, for the restart figures, when
// `nginx` is installed (Debian: apt-get install nginx-light): keep-alive connections to
// the targets, passive checks (max_fails=1 fail_timeout=1s) and its next-upstream retries
// (on errors, timeouts, 502 and 503; never a POST that may have reached a target). It
// runs in the foreground on a loopback port, with its files in a temporary folder.

const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')

/** true when an `nginx` binary runs */
function nginxInstalled () {
  return spawnSync('nginx', ['-v'], { stdio: 'ignore' }).status === 0
}

function freePort () {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function accepting (port, deadline) {
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error('nginx did not start listening')
}

/** Starts NGINX proxying to `urls`; resolves with its URL and a stop(). */
async function startNginx (urls) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fastify-upstream-nginx-'))
  const port = await freePort()
  const servers = urls.map((url) => `    server ${new URL(url).host} max_fails=1 fail_timeout=1s;`).join('\n')
  fs.writeFileSync(path.join(dir, 'nginx.conf'), `worker_processes 1;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream pool {
${servers}
    keepalive 32;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503;
    }
  }
}
`)
  const child = spawn('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-g', 'daemon off; master_process off;'], { stdio: 'ignore' })
  await accepting(port, Date.now() + 5000)
  return {
    url: `http://127.0.0.1:${port}`,
    async stop () {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}

module.exports = { nginxInstalled, startNginx }
