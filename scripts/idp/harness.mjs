// Helpers for tests that drive the test IdP from node (selftest.mjs, scripts/browser/):
// start/stop the server, read its request counters, and log in over plain HTTP with a cookie jar.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const SERVER = join(HERE, 'server.mjs');

// Start server.mjs with `env` added to ours; resolves once it printed READY (or rejects after
// `timeoutMs`). The returned handle's stop() kills it and waits for the exit.
export function startIdp(env = {}, { timeoutMs = 15000 } = {}) {
  const child = spawn(process.execPath, [SERVER], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    // Keep only the tail: enough to explain a failed start, bounded for long runs.
    stderr = (stderr + d).slice(-8192);
    if (process.env.IDP_VERBOSE === '1') process.stderr.write(d);
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));

  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`IdP not READY after ${timeoutMs} ms; stderr:\n${stderr}`));
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`IdP exited with ${code} before READY; stderr:\n${stderr}`));
    });
    child.stdout.on('data', (d) => {
      out += d;
      const m = /^READY (\S+)$/m.exec(out);
      if (!m) return;
      clearTimeout(timer);
      const issuer = m[1];
      resolve({
        issuer,
        port: Number(new URL(issuer).port),
        child,
        stderr: () => stderr,
        async stats() {
          return (await fetch(`${issuer}/__stats`)).json();
        },
        async resetStats() {
          await fetch(`${issuer}/__stats/reset`, { method: 'POST' });
        },
        async stop() {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
          await exited;
        },
      });
    });
  });
}

export function basicAuth(id, secret) {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

// POST a form to an endpoint, authenticating as a confidential client when `secret` is given.
export async function postForm(url, params, { clientId, secret } = {}) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  const body = new URLSearchParams(params);
  if (secret !== undefined) headers.authorization = basicAuth(clientId, secret);
  else if (clientId !== undefined) body.set('client_id', clientId);
  const res = await fetch(url, { method: 'POST', headers, body });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text, headers: res.headers };
}

export function decodeJwt(jwt) {
  const [header, payload] = jwt.split('.').slice(0, 2)
    .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  return { header, payload };
}

export function pkcePair() {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}

// Minimal path-aware cookie jar for one origin (the IdP). Enough for oidc-provider's
// interaction cookies, which reuse names under different paths.
export class CookieJar {
  #cookies = new Map(); // `${name}\0${path}` -> { name, value, path }

  store(setCookieHeaders) {
    for (const line of setCookieHeaders) {
      const [pair, ...attrs] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let path = '/';
      let expired = value === '';
      for (const attr of attrs) {
        const [k, v = ''] = attr.split('=');
        const key = k.toLowerCase();
        if (key === 'path') path = v || '/';
        if (key === 'max-age' && Number(v) <= 0) expired = true;
        if (key === 'expires' && Date.parse(v) <= Date.now()) expired = true;
      }
      const id = `${name}\0${path}`;
      if (expired) this.#cookies.delete(id);
      else this.#cookies.set(id, { name, value, path });
    }
  }

  header(url) {
    const { pathname } = new URL(url);
    const matching = [...this.#cookies.values()].filter(
      (c) => pathname === c.path || pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`),
    );
    return matching.map((c) => `${c.name}=${c.value}`).join('; ');
  }

  async fetch(url, init = {}) {
    const headers = { ...(init.headers ?? {}) };
    const cookie = this.header(url);
    if (cookie) headers.cookie = cookie;
    const res = await fetch(url, { ...init, headers, redirect: 'manual' });
    this.store(res.headers.getSetCookie());
    return res;
  }
}

function formOf(html) {
  const action = /<form[^>]*action="([^"]+)"/.exec(html)?.[1];
  const prompt = /name="prompt" value="([^"]+)"/.exec(html)?.[1];
  return { action, prompt };
}

// Drive an authorization request to the redirect back to the client, as a user would in a
// browser: follow redirects, fill the dev login form (any login, any password), press Continue
// on consent. Resolves with the URL the IdP redirected to (carrying code, state and iss).
// `startUrl` is the full authorization URL; `redirectUri` tells where to stop.
export async function interactiveLogin(startUrl, redirectUri, { login = 'alice', jar = new CookieJar(), maxSteps = 20 } = {}) {
  let url = startUrl;
  let init = {};
  for (let step = 0; step < maxSteps; step += 1) {
    if (url.startsWith(redirectUri)) return { url: new URL(url), jar };
    const res = await jar.fetch(url, init);
    init = {};
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      url = new URL(location, url).href;
      continue;
    }
    const html = await res.text();
    if (res.status !== 200) throw new Error(`login step ${step}: ${res.status} at ${url}: ${html.slice(0, 300)}`);
    const { action, prompt } = formOf(html);
    if (!action || !prompt) throw new Error(`login step ${step}: no interaction form at ${url}`);
    const body = new URLSearchParams({ prompt });
    if (prompt === 'login') {
      body.set('login', login);
      body.set('password', 'any');
    }
    url = new URL(action, url).href;
    init = { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body };
  }
  throw new Error(`login did not reach ${redirectUri} in ${maxSteps} steps (last ${url})`);
}
