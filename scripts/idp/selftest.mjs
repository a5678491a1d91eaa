// Proves the test IdP fixture does what the gateway's tests rely on. Run: node --test scripts/idp/
// (idp.test.mjs imports this file so the test runner's default pattern finds it).

import assert from 'node:assert/strict';
import { createPublicKey, verify } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  decodeJwt, interactiveLogin, pkcePair, postForm, startIdp, CookieJar,
} from './harness.mjs';

const GENKEYS = fileURLToPath(new URL('./genkeys.mjs', import.meta.url));
const API = 'urn:shardgate:api';
const REDIRECT = 'http://127.0.0.1:9080/callback';

async function jwks(issuer) {
  return (await fetch(`${issuer}/jwks`)).json();
}

// Verify a JWS against the IdP's published keys, so a token "with the right aud" is also one a
// relying party would accept.
function verifyJws(jwt, keys) {
  const [h, p, s] = jwt.split('.');
  const { header } = decodeJwt(jwt);
  const jwk = keys.find((k) => k.kid === header.kid);
  assert.ok(jwk, `kid ${header.kid} published`);
  const key = createPublicKey({ key: jwk, format: 'jwk' });
  const data = Buffer.from(`${h}.${p}`);
  const sig = Buffer.from(s, 'base64url');
  const ok = header.alg === 'ES256'
    ? verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig)
    : verify('sha256', data, key, sig);
  assert.ok(ok, `signature verifies (${header.alg})`);
}

async function clientCredentials(issuer, id, extra = {}) {
  const res = await postForm(`${issuer}/token`, { grant_type: 'client_credentials', ...extra }, {
    clientId: id, secret: `${id}-secret`,
  });
  assert.equal(res.status, 200, res.text);
  return res.json;
}

async function introspect(issuer, token) {
  const res = await postForm(`${issuer}/token/introspection`, { token }, { clientId: 'gateway', secret: 'gateway-secret' });
  assert.equal(res.status, 200, res.text);
  return res.json;
}

async function revoke(issuer, token) {
  const res = await postForm(`${issuer}/token/revocation`, { token }, { clientId: 'gateway', secret: 'gateway-secret' });
  assert.equal(res.status, 200, res.text);
}

function authorizeUrl(issuer, params) {
  const url = new URL(`${issuer}/auth`);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  return url.href;
}

describe('test IdP (default settings)', () => {
  let idp;
  let backchannel;
  const logoutTokens = [];

  before(async () => {
    backchannel = createServer((req, res) => {
      let body = '';
      req.on('data', (d) => { body += d; });
      req.on('end', () => {
        logoutTokens.push(new URLSearchParams(body).get('logout_token'));
        res.writeHead(200).end();
      });
    });
    await new Promise((resolve) => backchannel.listen(0, '127.0.0.1', resolve));
    idp = await startIdp({
      IDP_PORT: '0',
      IDP_KEYS: '',
      IDP_BACKCHANNEL_URI: `http://127.0.0.1:${backchannel.address().port}/backchannel`,
    });
  });

  after(async () => {
    await idp?.stop();
    backchannel?.close();
  });

  test('discovery names every endpoint the gateway uses', async () => {
    const res = await fetch(`${idp.issuer}/.well-known/openid-configuration`);
    assert.equal(res.status, 200);
    const d = await res.json();
    assert.equal(d.issuer, idp.issuer);
    for (const key of ['authorization_endpoint', 'token_endpoint', 'jwks_uri', 'userinfo_endpoint',
      'introspection_endpoint', 'revocation_endpoint', 'end_session_endpoint']) {
      assert.ok(d[key]?.startsWith(`${idp.issuer}/`), `${key} = ${d[key]}`);
    }
    for (const gt of ['authorization_code', 'refresh_token', 'client_credentials', 'password']) {
      assert.ok(d.grant_types_supported.includes(gt), gt);
    }
    assert.equal(d.backchannel_logout_supported, true);
    assert.equal(d.authorization_response_iss_parameter_supported, true);
  });

  test('jwks publishes an RSA and an EC key, public parts only', async () => {
    const { keys } = await jwks(idp.issuer);
    assert.deepEqual(keys.map((k) => k.kty).sort(), ['EC', 'RSA']);
    for (const k of keys) {
      assert.equal(k.d, undefined, 'no private exponent');
      assert.ok(k.kid);
    }
  });

  test('m2m gets an RS256 JWT for urn:shardgate:api with the requested scopes', async () => {
    const tok = await clientCredentials(idp.issuer, 'm2m', { scope: 'read write' });
    const { header, payload } = decodeJwt(tok.access_token);
    assert.equal(header.alg, 'RS256');
    assert.equal(payload.aud, API);
    assert.equal(payload.iss, idp.issuer);
    assert.equal(payload.client_id, 'm2m');
    assert.equal(payload.scope, 'read write');
    assert.equal(payload.exp - payload.iat, 300);
    verifyJws(tok.access_token, (await jwks(idp.issuer)).keys);
  });

  test('m2m-short tokens live 2 s, m2m-other tokens are for another audience', async () => {
    const short = decodeJwt((await clientCredentials(idp.issuer, 'm2m-short')).access_token).payload;
    assert.equal(short.exp - short.iat, 2);
    assert.equal(short.aud, API);
    const other = decodeJwt((await clientCredentials(idp.issuer, 'm2m-other', { scope: 'read' })).access_token).payload;
    assert.equal(other.aud, 'urn:other:api');
  });

  test('wrong client secret is refused', async () => {
    const res = await postForm(`${idp.issuer}/token`, { grant_type: 'client_credentials' }, { clientId: 'm2m', secret: 'nope' });
    assert.equal(res.status, 401);
    assert.equal(res.json.error, 'invalid_client');
  });

  test('m2m-opaque token introspects active until revoked', async () => {
    const tok = await clientCredentials(idp.issuer, 'm2m-opaque');
    assert.equal(tok.access_token.split('.').length, 1, 'opaque, not a JWT');
    const active = await introspect(idp.issuer, tok.access_token);
    assert.equal(active.active, true);
    assert.equal(active.client_id, 'm2m-opaque');
    assert.equal(active.exp - active.iat, 300);
    await revoke(idp.issuer, tok.access_token);
    assert.deepEqual(await introspect(idp.issuer, tok.access_token), { active: false });
  });

  test('password grant issues a JWT and a refresh token; refresh rotates and returns a JWT again', async () => {
    const bad = await postForm(`${idp.issuer}/token`, { grant_type: 'password', username: 'bob', password: 'wrong' }, { clientId: 'pw', secret: 'pw-secret' });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error, 'invalid_grant');

    const first = await postForm(`${idp.issuer}/token`, { grant_type: 'password', username: 'bob', password: 'pass' }, { clientId: 'pw', secret: 'pw-secret' });
    assert.equal(first.status, 200, first.text);
    const at1 = decodeJwt(first.json.access_token).payload;
    assert.equal(at1.sub, 'bob');
    assert.equal(at1.aud, API);
    assert.equal(at1.scope, 'read write admin');
    assert.ok(first.json.refresh_token);

    const refreshed = await postForm(`${idp.issuer}/token`, { grant_type: 'refresh_token', refresh_token: first.json.refresh_token }, { clientId: 'pw', secret: 'pw-secret' });
    assert.equal(refreshed.status, 200, refreshed.text);
    const at2 = decodeJwt(refreshed.json.access_token).payload;
    assert.equal(at2.sub, 'bob');
    assert.equal(at2.aud, API);
    assert.notEqual(refreshed.json.refresh_token, first.json.refresh_token, 'rotated');
    verifyJws(refreshed.json.access_token, (await jwks(idp.issuer)).keys);

    // Reusing a rotated refresh token is refused (and revokes the grant, as RFC 9700 suggests).
    const reuse = await postForm(`${idp.issuer}/token`, { grant_type: 'refresh_token', refresh_token: first.json.refresh_token }, { clientId: 'pw', secret: 'pw-secret' });
    assert.equal(reuse.status, 400);
    assert.equal(reuse.json.error, 'invalid_grant');
  });

  test('pw-opaque: refreshed opaque token is active, the revoked one it replaced is not', async () => {
    const first = await postForm(`${idp.issuer}/token`, { grant_type: 'password', username: 'carol', password: 'pass' }, { clientId: 'pw-opaque', secret: 'pw-opaque-secret' });
    assert.equal(first.status, 200, first.text);
    assert.equal(first.json.access_token.split('.').length, 1);
    const intro = await introspect(idp.issuer, first.json.access_token);
    assert.equal(intro.active, true);
    assert.equal(intro.sub, 'carol');

    const refreshed = await postForm(`${idp.issuer}/token`, { grant_type: 'refresh_token', refresh_token: first.json.refresh_token }, { clientId: 'pw-opaque', secret: 'pw-opaque-secret' });
    assert.equal(refreshed.status, 200, refreshed.text);
    await revoke(idp.issuer, first.json.access_token);
    assert.equal((await introspect(idp.issuer, first.json.access_token)).active, false);
    assert.equal((await introspect(idp.issuer, refreshed.json.access_token)).active, true);
  });

  test('authorization code login with PKCE, userinfo, refresh, logout with back-channel', async () => {
    const { verifier, challenge } = pkcePair();
    const start = authorizeUrl(idp.issuer, {
      client_id: 'gateway',
      response_type: 'code',
      scope: 'openid profile email',
      redirect_uri: REDIRECT,
      state: 'st-123',
      nonce: 'n-456',
      code_challenge: challenge,
      code_challenge_method: 'S256',
    });
    const jar = new CookieJar();
    const { url } = await interactiveLogin(start, REDIRECT, { login: 'alice', jar });
    assert.equal(url.searchParams.get('state'), 'st-123');
    assert.equal(url.searchParams.get('iss'), idp.issuer);
    const code = url.searchParams.get('code');
    assert.ok(code);

    const tok = await postForm(`${idp.issuer}/token`, {
      grant_type: 'authorization_code', code, redirect_uri: REDIRECT, code_verifier: verifier,
    }, { clientId: 'gateway', secret: 'gateway-secret' });
    assert.equal(tok.status, 200, tok.text);
    assert.ok(tok.json.refresh_token, 'refresh token issued without offline_access');
    const id = decodeJwt(tok.json.id_token).payload;
    assert.equal(id.sub, 'alice');
    assert.equal(id.nonce, 'n-456');
    assert.equal(id.aud, 'gateway');
    assert.equal(id.email, 'alice@example.test');
    assert.equal(id.name, 'Alice');
    assert.ok(id.sid);
    verifyJws(tok.json.id_token, (await jwks(idp.issuer)).keys);

    const ui = await fetch(`${idp.issuer}/me`, { headers: { authorization: `Bearer ${tok.json.access_token}` } });
    assert.equal(ui.status, 200);
    assert.equal((await ui.json()).preferred_username, 'alice');

    const refreshed = await postForm(`${idp.issuer}/token`, { grant_type: 'refresh_token', refresh_token: tok.json.refresh_token }, { clientId: 'gateway', secret: 'gateway-secret' });
    assert.equal(refreshed.status, 200, refreshed.text);
    assert.notEqual(refreshed.json.refresh_token, tok.json.refresh_token);
    assert.ok(refreshed.json.id_token);

    // A code is single use.
    const again = await postForm(`${idp.issuer}/token`, {
      grant_type: 'authorization_code', code, redirect_uri: REDIRECT, code_verifier: verifier,
    }, { clientId: 'gateway', secret: 'gateway-secret' });
    assert.equal(again.json.error, 'invalid_grant');

    // RP-initiated logout: confirm page, then redirect to the registered post-logout URI, and
    // a logout token for this session on the back channel.
    const end = new URL(`${idp.issuer}/session/end`);
    end.searchParams.set('id_token_hint', tok.json.id_token);
    end.searchParams.set('post_logout_redirect_uri', 'http://127.0.0.1:9080/');
    end.searchParams.set('state', 'bye');
    const confirm = await jar.fetch(end.href);
    assert.equal(confirm.status, 200);
    const html = await confirm.text();
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(html)?.[1];
    assert.ok(xsrf, 'confirm form has xsrf');
    const done = await jar.fetch(`${idp.issuer}/session/end/confirm`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ xsrf, logout: 'yes' }),
    });
    assert.equal(done.status, 303);
    const back = new URL(done.headers.get('location'), idp.issuer);
    assert.equal(`${back.origin}${back.pathname}`, 'http://127.0.0.1:9080/');
    assert.equal(back.searchParams.get('state'), 'bye');
    assert.equal(logoutTokens.length, 1);
    const lt = decodeJwt(logoutTokens[0]).payload;
    assert.equal(lt.sid, id.sid);
    assert.equal(lt.sub, 'alice');
    assert.ok(lt.events['http://schemas.openid.net/event/backchannel-logout']);
  });

  test('spa is public and must use PKCE', async () => {
    const noPkce = authorizeUrl(idp.issuer, {
      client_id: 'spa', response_type: 'code', scope: 'openid', redirect_uri: REDIRECT, state: 's',
    });
    const { url: err } = await interactiveLogin(noPkce, REDIRECT);
    assert.equal(err.searchParams.get('error'), 'invalid_request');

    const { verifier, challenge } = pkcePair();
    const start = authorizeUrl(idp.issuer, {
      client_id: 'spa', response_type: 'code', scope: 'openid', redirect_uri: REDIRECT, state: 's2',
      code_challenge: challenge, code_challenge_method: 'S256',
    });
    const { url } = await interactiveLogin(start, REDIRECT, { login: 'dave' });
    const tok = await postForm(`${idp.issuer}/token`, {
      grant_type: 'authorization_code', code: url.searchParams.get('code'), redirect_uri: REDIRECT, code_verifier: verifier,
    }, { clientId: 'spa' });
    assert.equal(tok.status, 200, tok.text);
    assert.equal(decodeJwt(tok.json.id_token).payload.sub, 'dave');
  });

  test('__stats counts requests by path and resets', async () => {
    await idp.resetStats();
    await fetch(`${idp.issuer}/jwks`);
    await fetch(`${idp.issuer}/jwks`);
    await clientCredentials(idp.issuer, 'm2m-opaque');
    const { paths, total } = await idp.stats();
    assert.deepEqual(paths, { '/jwks': 2, '/token': 1 });
    assert.equal(total, 3);
  });
});

describe('test IdP (key files, ES256, no rotation, auto consent, restart on the same port)', () => {
  let dir;
  let idp;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'idp-keys-'));
    execFileSync(process.execPath, [GENKEYS, join(dir, 'a.json'), '--kid', 'rsa-a'], { stdio: 'ignore' });
    execFileSync(process.execPath, [GENKEYS, join(dir, 'a.json'), '--kid', 'ec-a', '--alg', 'ES256', '--append'], { stdio: 'ignore' });
    execFileSync(process.execPath, [GENKEYS, join(dir, 'b.json'), '--kid', 'rsa-b'], { stdio: 'ignore' });
  });

  after(async () => {
    await idp?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('ES256 access tokens, refresh tokens kept, login without consent', async () => {
    idp = await startIdp({
      IDP_PORT: '0', IDP_KEYS: join(dir, 'a.json'), IDP_AT_ALG: 'ES256', IDP_ROTATE_RT: '0', IDP_AUTO_CONSENT: '1',
    });
    const { keys } = await jwks(idp.issuer);
    assert.deepEqual(keys.map((k) => k.kid).sort(), ['ec-a', 'rsa-a']);

    const tok = await clientCredentials(idp.issuer, 'm2m', { scope: 'admin' });
    assert.equal(decodeJwt(tok.access_token).header.kid, 'ec-a');
    verifyJws(tok.access_token, keys);

    const first = await postForm(`${idp.issuer}/token`, { grant_type: 'password', username: 'erin', password: 'pass' }, { clientId: 'pw', secret: 'pw-secret' });
    const refreshed = await postForm(`${idp.issuer}/token`, { grant_type: 'refresh_token', refresh_token: first.json.refresh_token }, { clientId: 'pw', secret: 'pw-secret' });
    assert.equal(refreshed.status, 200, refreshed.text);
    assert.equal(refreshed.json.refresh_token, first.json.refresh_token, 'not rotated');

    const start = authorizeUrl(idp.issuer, {
      client_id: 'gateway', response_type: 'code', scope: 'openid email', redirect_uri: REDIRECT, state: 'x',
    });
    await idp.resetStats();
    const { url } = await interactiveLogin(start, REDIRECT);
    assert.ok(url.searchParams.get('code'));
    // One login form POST, no consent POST.
    const posts = Object.entries((await idp.stats()).paths).filter(([p]) => p.startsWith('/interaction/'));
    assert.equal(posts.length, 1, JSON.stringify(posts));
  });

  test('restart on the same port with another key file rotates the published keys', async () => {
    const { port } = idp;
    await idp.stop();
    idp = await startIdp({ IDP_PORT: String(port), IDP_KEYS: join(dir, 'b.json') });
    assert.equal(idp.port, port);
    const { keys } = await jwks(idp.issuer);
    assert.deepEqual(keys.map((k) => k.kid), ['rsa-b']);
    const tok = await clientCredentials(idp.issuer, 'm2m');
    assert.equal(decodeJwt(tok.access_token).header.kid, 'rsa-b');
  });
});
