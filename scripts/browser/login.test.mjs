// A person's login through shardgate in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core): the gateway redirects to the test IdP's real login page, the form is filled
// and consent given, the browser lands on the upstream's page naming alice, then "Log out" ends
// the session at the gateway and at the IdP.
//
//   node --test scripts/browser/      (scripts/test.sh builds the gateway and sets SHARDGATE_BIN)
//
// Env: SHARDGATE_BIN (default target/debug/shardgate), CHROMIUM (default /usr/bin/chromium).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startIdp } from '../idp/harness.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = process.env.SHARDGATE_BIN || join(ROOT, 'target', 'debug', 'shardgate');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Without the background-networking flags Chromium keeps dialling Google's hosts, which a closed
// network refuses many times over.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const STEP_MS = 15000;

// A free loopback port: bound, then released for the gateway (the IdP must know it first).
function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

// Spawns `cmd` and resolves with the URL it prints as `READY <url>` (bounded).
function startReady(cmd, args, { timeoutMs = STEP_MS } = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-8192);
  });
  return new Promise((ok, fail) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      fail(new Error(`${cmd} not READY after ${timeoutMs} ms: ${stderr}`));
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`${cmd} exited with ${code}: ${stderr}`));
    });
    child.stdout.on('data', (d) => {
      out += d;
      const m = /^READY (\S+)$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        ok({ child, url: m[1] });
      }
    });
  });
}

async function waitReady(url, timeoutMs, why) {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url);
      if (res.status === 200) return;
      last = `${res.status} ${await res.text()}`;
    } catch (e) {
      last = String(e.cause?.code ?? e);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms (${last})\n${why()}`);
}

function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  return exited.finally(() => clearTimeout(timer));
}

const run = { dir: mkdtempSync(join(tmpdir(), 'shardgate-browser-')) };

before(async () => {
  assert.ok(existsSync(BIN), `gateway binary ${BIN} missing: cargo build -p shardgate-gateway`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: scripts/install.sh installs chromium`);
  const port = await freePort();
  const admin = await freePort();
  run.base = `http://127.0.0.1:${port}`;
  run.idp = await startIdp({
    IDP_REDIRECT_URIS: `${run.base}/callback`,
    IDP_POST_LOGOUT_URIS: `${run.base}/`,
  });
  run.echo = await startReady('python3', [join(ROOT, 'scripts/upstream/echo.py'), '--port', '0', '--quiet']);
  const upstream = new URL(run.echo.url).host;
  const config = join(run.dir, 'config.yaml');
  writeFileSync(
    config,
    `gateway:
  listen: ["127.0.0.1:${port}"]
  admin: { listen: "127.0.0.1:${admin}" }
upstreams:
  - id: app
    nodes: { "${upstream}": 1 }
routes:
  - id: web
    uri: /*
    upstream_id: app
    plugins:
      openid-connect:
        client_id: gateway
        client_secret: gateway-secret
        discovery: ${run.idp.issuer}/.well-known/openid-configuration
        redirect_uri: ${run.base}/callback
        scope: openid profile email
        use_pkce: true
        logout_path: /logout
        post_logout_redirect_uri: ${run.base}/
        set_userinfo_header: true
        session:
          secret: browser-test-session-secret-0123456789
          cookie_secure: false
`,
  );
  const logPath = join(run.dir, 'gateway.log');
  const log = openSync(logPath, 'w');
  run.gatewayLog = () => readFileSync(logPath, 'utf8');
  run.gateway = spawn(BIN, ['run', '-c', config, '--shards', '2'], {
    stdio: ['ignore', 'ignore', log],
    env: { ...process.env, SHARDGATE_LOG: 'info' },
  });
  await waitReady(`http://127.0.0.1:${admin}/readyz`, 30000, run.gatewayLog);
  run.context = await chromium.launchPersistentContext(join(run.dir, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30000,
  });
  run.context.setDefaultTimeout(STEP_MS);
});

after(async () => {
  await run.context?.close().catch(() => {});
  await Promise.all([stop(run.gateway), stop(run.echo?.child), run.idp?.stop()]);
  rmSync(run.dir, { recursive: true, force: true });
});

test('log in through the IdP login page, reach the upstream as alice, log out', { timeout: 120000 }, async () => {
  const page = run.context.pages()[0] ?? (await run.context.newPage());
  const idp = run.idp.issuer;

  // The callback's code and state, to check below that the gateway's log never records them.
  const callbacks = [];
  page.on('request', (req) => {
    if (req.url().startsWith(`${run.base}/callback?`)) callbacks.push(new URL(req.url()));
  });

  // No session: the gateway sends the browser to the IdP, which shows its login form.
  await page.goto(`${run.base}/hello?from=browser`);
  await page.waitForURL((u) => u.href.startsWith(`${idp}/interaction/`));
  await page.locator('input[name="login"]').fill('alice');
  await page.locator('input[name="password"]').fill('any password');
  await page.locator('button[type="submit"]').click();

  // Consent (another interaction page: wait for its form, not for the URL), then the callback,
  // then the page the browser first asked for.
  await page.locator('input[name="prompt"][value="consent"]').waitFor({ state: 'attached' });
  await page.locator('button[type="submit"]').click();
  await page.waitForURL((u) => u.href === `${run.base}/hello?from=browser`);
  const heading = await page.locator('h1').innerText();
  assert.match(heading, /You are\s+Alice/, await page.content());
  const body = await page.locator('body').innerText();
  assert.match(body, /alice@example\.test/);
  // The upstream shows the headers it received: identity yes, our session cookie no.
  assert.match(body, /X-Userinfo/i);
  assert.doesNotMatch(body, /\bsession=/);
  const cookies = await run.context.cookies(run.base);
  assert.ok(cookies.some((c) => c.name === 'session' && c.httpOnly && c.sameSite === 'Lax'), JSON.stringify(cookies));
  const sessionCookie = cookies.find((c) => c.name === 'session').value;

  // Log out: the gateway clears its cookie and sends the browser to the IdP's end_session page.
  await page.getByRole('link', { name: 'Log out' }).click();
  await page.waitForURL((u) => u.href.startsWith(`${idp}/session/end`));
  assert.ok(!(await run.context.cookies(run.base)).some((c) => c.name === 'session'), 'session cookie not cleared');
  await page.getByRole('button', { name: /yes/i }).click();
  // Back at the gateway's post-logout URI without a session: off to the IdP's login form again.
  await page.waitForURL((u) => u.href.startsWith(`${idp}/interaction/`));
  assert.ok(await page.locator('input[name="login"]').isVisible());

  // The whole run's log: the callback was logged, but none of the secrets it carried, nor the
  // session cookie, nor the configured secrets.
  assert.equal(callbacks.length, 1, callbacks.join(' '));
  const code = callbacks[0].searchParams.get('code');
  const state = callbacks[0].searchParams.get('state');
  assert.ok(code && state, callbacks[0].href);
  const log = run.gatewayLog();
  assert.match(log, /\/callback\?\S*code=REDACTED/, log);
  for (const [what, secret] of [
    ['authorization code', code],
    ['state', state],
    ['session cookie', sessionCookie],
    ['client secret', 'gateway-secret'],
    ['session secret', 'browser-test-session-secret-0123456789'],
  ]) {
    assert.ok(!log.includes(secret), `${what} in the gateway log:\n${log}`);
  }
});
