#!/usr/bin/env node
// Test OpenID Connect provider for shardgate: a real `oidc-provider` with fixed clients and
// a request counter in front. Started by the gateway's integration tests, the browser test,
// scripts/demo.sh and the selftest (selftest.mjs). Not for production: any login works.
//
// Environment (all optional):
//   IDP_PORT              listen port on 127.0.0.1; 0 (default) picks a free one. Issuer is
//                         http://127.0.0.1:<port>. When listening, exactly one line
//                         `READY http://127.0.0.1:<port>` goes to stdout; every log goes to stderr.
//   IDP_HOST              listen address instead of 127.0.0.1 (the demo's --bind).
//   IDP_ISSUER            issuer URL instead of http://127.0.0.1:<port>, when clients reach the IdP
//                         by another name (the demo's --public-url); READY then prints it.
//   IDP_KEYS              path to a private JWKS ({"keys":[...]}, see genkeys.mjs). Default: a fresh
//                         RS256 and a fresh ES256 key, in memory only (they change on every start).
//   IDP_AT_ALG            signing alg of JWT access tokens: RS256 (default), ES256, or ES512
//                         (with IDP_ES512=1).
//   IDP_REDIRECT_URIS     comma list of redirect_uris for `gateway` and `spa`
//                         (default http://127.0.0.1:9080/callback).
//   IDP_POST_LOGOUT_URIS  comma list of post_logout_redirect_uris (default http://127.0.0.1:9080/).
//   IDP_BACKCHANNEL_URI   backchannel_logout_uri of `gateway` (default: none).
//   IDP_ROTATE_RT         1 (default): every refresh_token grant rotates the refresh token; 0: never.
//   IDP_AT_TTL            lifetime of JWT access tokens, seconds (default 300).
//   IDP_OPAQUE_TTL        lifetime of opaque access tokens, seconds (default 300).
//   IDP_ID_TOKEN_TTL      lifetime of ID tokens, seconds (default 3600).
//   IDP_RT_TTL            lifetime of refresh tokens, seconds (default 86400).
//   IDP_AUTO_CONSENT      1: skip the consent page (the login is then the only interaction); default 0.
//   IDP_LOG               1: log every request (method, path, status) to stderr; default 0.
//   IDP_ES512             1: add an ephemeral P-521 key and the `gateway-es512` client, whose ID
//                         tokens are signed ES512, and the `gateway-pkjwt` client, which
//                         authenticates with ES512 private_key_jwt; default 0.
//   IDP_CLIENT_JWKS       path to the public JWKS registered for `gateway-pkjwt`. Default: a fresh
//                         P-521 key whose private half nobody has (every assertion is refused).
//   IDP_DPOP_NONCE        1: the token and userinfo endpoints require a DPoP server nonce
//                         (use_dpop_nonce + DPoP-Nonce, RFC 9449 section 8); default 0.
//
// Clients (id / secret): see README.md next to this file for what each one is for.
// Test hooks: GET /__stats -> {"paths":{"/token":n,...},"total":n}; POST /__stats/reset.

import { AsyncLocalStorage } from 'node:async_hooks';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { generateJwk } from './genkeys.mjs';

// Imported dynamically so a checkout without node_modules fails with the fix, not a module trace.
const { default: Provider, errors } = await import('oidc-provider').catch((err) => {
  process.stderr.write(`[idp] cannot load oidc-provider (${err.code ?? err.message}): `
    + 'run scripts/install.sh, or npm ci in scripts/idp\n');
  process.exit(1);
});

const API = 'urn:shardgate:api';
const OTHER_API = 'urn:other:api';
const RESOURCE_SCOPES = 'read write admin';
const USER_PASSWORD = 'pass';

function log(msg) {
  process.stderr.write(`[idp] ${msg}\n`);
}

function envInt(name, dflt) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${raw}`);
  return n;
}

function envList(name, dflt) {
  const raw = process.env[name];
  const list = (raw === undefined ? dflt : raw).split(',').map((s) => s.trim()).filter(Boolean);
  return list;
}

const cfg = {
  port: envInt('IDP_PORT', 0),
  atAlg: process.env.IDP_AT_ALG || 'RS256',
  redirectUris: envList('IDP_REDIRECT_URIS', 'http://127.0.0.1:9080/callback'),
  postLogoutUris: envList('IDP_POST_LOGOUT_URIS', 'http://127.0.0.1:9080/'),
  backchannelUri: process.env.IDP_BACKCHANNEL_URI || undefined,
  rotateRt: process.env.IDP_ROTATE_RT !== '0',
  atTtl: envInt('IDP_AT_TTL', 300),
  opaqueTtl: envInt('IDP_OPAQUE_TTL', 300),
  idTokenTtl: envInt('IDP_ID_TOKEN_TTL', 3600),
  rtTtl: envInt('IDP_RT_TTL', 86400),
  autoConsent: process.env.IDP_AUTO_CONSENT === '1',
  logRequests: process.env.IDP_LOG === '1',
  dpopNonce: process.env.IDP_DPOP_NONCE === '1',
  es512: process.env.IDP_ES512 === '1',
  clientJwks: process.env.IDP_CLIENT_JWKS || undefined,
};
if (!['RS256', 'ES256', ...(cfg.es512 ? ['ES512'] : [])].includes(cfg.atAlg)) {
  throw new Error(`IDP_AT_ALG must be RS256 or ES256 (or ES512 with IDP_ES512=1), got ${cfg.atAlg}`);
}

function loadKeys() {
  if (!process.env.IDP_KEYS) {
    const keys = [generateJwk('RS256', 'rs-ephemeral'), generateJwk('ES256', 'es-ephemeral')];
    if (cfg.es512) keys.push(generateJwk('ES512', 'es512-ephemeral'));
    return { keys };
  }
  const jwks = JSON.parse(readFileSync(process.env.IDP_KEYS, 'utf8'));
  if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) {
    throw new Error(`${process.env.IDP_KEYS}: no keys`);
  }
  return jwks;
}

// The public keys `gateway-pkjwt` signs its client assertions with.
function clientJwks() {
  if (!cfg.clientJwks) {
    const { d: _private, ...pub } = generateJwk('ES512', 'pkjwt-unknown');
    return { keys: [pub] };
  }
  const jwks = JSON.parse(readFileSync(cfg.clientJwks, 'utf8'));
  if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) {
    throw new Error(`${cfg.clientJwks}: no keys`);
  }
  return jwks;
}

// Which resource (JWT audience) a client's tokens are for when it names none. Only machine
// clients get one: a resource-bound token loses its OpenID scopes and is refused at userinfo.
const DEFAULT_RESOURCE = {
  m2m: API,
  'm2m-short': API,
  'm2m-other': OTHER_API,
  pw: API,
};
const RESOURCE_SERVERS = new Set([API, OTHER_API]);

function jwtTtlFor(clientId) {
  return clientId === 'm2m-short' ? 2 : cfg.atTtl;
}

function opaqueTtlFor(clientId) {
  return clientId === 'm2m-short' ? 2 : cfg.opaqueTtl;
}

const webClient = {
  redirect_uris: cfg.redirectUris,
  post_logout_redirect_uris: cfg.postLogoutUris,
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
};

const clients = [
  {
    ...webClient,
    client_id: 'gateway',
    client_secret: 'gateway-secret',
    ...(cfg.backchannelUri
      ? { backchannel_logout_uri: cfg.backchannelUri, backchannel_logout_session_required: true }
      : {}),
  },
  { ...webClient, client_id: 'spa', token_endpoint_auth_method: 'none' },
  // RFC 9126: its authorization requests must be pushed first (a plain /auth is refused).
  {
    ...webClient,
    client_id: 'gateway-par',
    client_secret: 'gateway-par-secret',
    require_pushed_authorization_requests: true,
  },
  // ES512 (P-521) ID tokens, only with IDP_ES512=1 (which adds the key).
  ...(cfg.es512 ? [{
    ...webClient,
    client_id: 'gateway-es512',
    client_secret: 'gateway-es512-secret',
    id_token_signed_response_alg: 'ES512',
  }, {
    // RFC 7523 client assertions signed ES512 with the key registered here (IDP_CLIENT_JWKS).
    ...webClient,
    client_id: 'gateway-pkjwt',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES512',
    jwks: clientJwks(),
  }] : []),
  ...['m2m', 'm2m-short', 'm2m-other', 'm2m-opaque'].map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  })),
  ...['pw', 'pw-opaque'].map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    grant_types: ['password', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
  })),
];

function accountFor(accountId) {
  const local = String(accountId).replace(/[^A-Za-z0-9._-]/g, '_') || 'user';
  return {
    accountId,
    async claims() {
      return {
        sub: accountId,
        name: local.charAt(0).toUpperCase() + local.slice(1),
        preferred_username: local,
        email: `${local}@example.test`,
        email_verified: true,
      };
    },
  };
}

const configuration = {
  clients,
  jwks: loadKeys(),
  cookies: { keys: ['shardgate-test-idp-cookie-key-1'] },
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  // The gateway puts ID token claims into X-ID-Token: keep name/email there, not only at userinfo.
  conformIdTokenClaims: false,
  findAccount: async (_ctx, id) => accountFor(id),
  // oidc-provider refuses outgoing requests to loopback (SSRF guard), but every relying party of
  // this test IdP (back-channel logout receivers) lives on 127.0.0.1.
  fetch: (url, { dispatcher: _ssrfGuard, ...options }) => globalThis.fetch(url, options),
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: cfg.rotateRt,
  ttl: {
    AccessToken: (_ctx, token, client) => token.resourceServer?.accessTokenTTL
      || opaqueTtlFor(client.clientId),
    ClientCredentials: (_ctx, token, client) => token.resourceServer?.accessTokenTTL
      || opaqueTtlFor(client.clientId),
    AuthorizationCode: 60,
    IdToken: cfg.idTokenTtl,
    RefreshToken: cfg.rtTtl,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  // DPoP proofs with the algorithms APISIX's `dpop.signing_alg` offers, besides the defaults.
  enabledJWA: {
    dPoPSigningAlgValues: ['ES256', 'RS256', 'PS256', 'Ed25519', 'EdDSA'],
    idTokenSigningAlgValues: ['RS256', 'PS256', 'ES256', 'ES512', 'Ed25519', 'EdDSA'],
    clientAuthSigningAlgValues: ['HS256', 'RS256', 'PS256', 'ES256', 'ES512', 'Ed25519', 'EdDSA'],
  },
  features: {
    // RFC 9449: a token request with a DPoP proof gets DPoP-bound tokens (JWT `cnf.jkt`,
    // introspection `cnf`), and userinfo then wants `Authorization: DPoP` with a proof.
    dPoP: {
      enabled: true,
      ...(cfg.dpopNonce ? {
        nonceSecret: randomBytes(32),
        requireNonce: () => true,
      } : {}),
    },
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Any confidential client may introspect any token (the gateway introspects tokens it
      // did not obtain); public clients only their own.
      allowedPolicy: async (ctx, client, token) => client.clientAuthMethod !== 'none'
        || token.clientId === ctx.oidc.client.clientId,
    },
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => client.clientId === 'gateway'
        || token.clientId === client.clientId,
    },
    // RFC 9126 (oidc-provider's default, stated so the fixture does not depend on it).
    pushedAuthorizationRequests: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
    userinfo: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, client, oneOf) => {
        const dflt = DEFAULT_RESOURCE[client.clientId];
        if (oneOf) return oneOf.includes(dflt) ? dflt : oneOf[0];
        return dflt;
      },
      getResourceServerInfo: async (_ctx, resource, client) => {
        if (!RESOURCE_SERVERS.has(resource)) throw new errors.InvalidTarget();
        return {
          scope: RESOURCE_SCOPES,
          audience: resource,
          accessTokenTTL: jwtTtlFor(client.clientId),
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: cfg.atAlg } },
        };
      },
      useGrantedResource: async () => true,
    },
  },
  ...(cfg.autoConsent ? { loadExistingGrant } : {}),
};

// Grants everything the client asked for, as if the user had pressed "Continue" on consent.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  if (grantId) return oidc.provider.Grant.find(grantId);
  const grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
  grant.addOIDCScope([...oidc.requestParamScopes].join(' '));
  if (oidc.params.claims) grant.addOIDCClaims(Object.keys(JSON.parse(oidc.params.claims).id_token ?? {}));
  for (const resource of [oidc.params.resource].flat().filter(Boolean)) {
    grant.addResourceScope(resource, [...oidc.requestParamScopes].join(' '));
  }
  await grant.save();
  return grant;
}

// Password grant (RFC 6749 4.3), which oidc-provider does not ship: any username, password "pass".
// Builds the same Grant an authorization would, so the built-in refresh_token grant works on it.
function registerPasswordGrant(provider) {
  provider.registerGrantType('password', async (ctx) => {
    const { username, password } = ctx.oidc.params;
    if (!username || password !== USER_PASSWORD) {
      throw new errors.InvalidGrant('invalid resource owner credentials');
    }
    const { client } = ctx.oidc;
    const requested = ctx.oidc.params.scope
      ? ctx.oidc.params.scope.split(' ')
      : ['openid', 'profile', 'email', 'offline_access', ...RESOURCE_SCOPES.split(' ')];
    const oidcScope = requested.filter((s) => configuration.scopes.includes(s)).join(' ');
    const resource = DEFAULT_RESOURCE[client.clientId];

    const grant = new provider.Grant({ clientId: client.clientId, accountId: username });
    grant.addOIDCScope(oidcScope);
    let resourceServer;
    let atScope = oidcScope;
    if (resource) {
      const info = await configuration.features.resourceIndicators.getResourceServerInfo(ctx, resource, client);
      resourceServer = new provider.ResourceServer(resource, info);
      atScope = requested.filter((s) => resourceServer.scopes.has(s)).join(' ');
      grant.addResourceScope(resource, atScope);
    }
    const grantId = await grant.save();

    const at = new provider.AccessToken({
      accountId: username, client, grantId, gty: 'password', scope: atScope || undefined,
    });
    if (resourceServer) at.resourceServer = resourceServer;
    ctx.oidc.entity('AccessToken', at);
    const accessToken = await at.save();

    const rt = new provider.RefreshToken({
      accountId: username,
      client,
      grantId,
      gty: 'password',
      resource,
      rotations: 0,
      scope: requested.join(' '),
    });
    ctx.oidc.entity('RefreshToken', rt);
    const refreshToken = await rt.save();

    ctx.body = {
      access_token: accessToken,
      expires_in: at.expiration,
      refresh_token: refreshToken,
      scope: at.scope,
      token_type: at.tokenType,
    };
  }, ['username', 'password', 'scope']);
}

// RFC 7009 lets a server revoke a whole grant when one access token is revoked, and oidc-provider
// does. Tests need "revoke the replaced access token, its successor keeps working", so revoking
// an access token here revokes only that token. The request context reaches the model statics
// through our own AsyncLocalStorage (oidc-provider's is internal).
const requestContext = new AsyncLocalStorage();

function revokeOnlyTheAccessToken(provider) {
  for (const model of [provider.AccessToken, provider.RefreshToken, provider.AuthorizationCode]) {
    const revokeByGrantId = model.revokeByGrantId.bind(model);
    model.revokeByGrantId = async (grantId) => {
      const oidc = requestContext.getStore()?.oidc;
      if (oidc?.route === 'revocation' && oidc.entities.AccessToken) return undefined;
      return revokeByGrantId(grantId);
    };
  }
}

// Counts every request by path so tests can assert "one JWKS fetch", "no introspection on a hit".
function statsMiddleware() {
  let paths = Object.create(null);
  let total = 0;
  return async function stats(ctx, next) {
    if (ctx.path === '/__stats' && ctx.method === 'GET') {
      ctx.body = { paths: { ...paths }, total };
      return;
    }
    if (ctx.path === '/__stats/reset' && ctx.method === 'POST') {
      paths = Object.create(null);
      total = 0;
      ctx.status = 204;
      return;
    }
    paths[ctx.path] = (paths[ctx.path] ?? 0) + 1;
    total += 1;
    await requestContext.run(ctx, next);
    if (cfg.logRequests) log(`${ctx.method} ${ctx.path} ${ctx.status}`);
  };
}

function listen(port) {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(port, process.env.IDP_HOST || '127.0.0.1', () => resolve(server));
  });
}

async function main() {
  // The issuer has to contain the real port, so bind first and build the provider after.
  const server = await listen(cfg.port);
  const { port } = server.address();
  // IDP_ISSUER: the URL browsers and the gateway reach this server by (the demo's --public-url).
  const issuer = process.env.IDP_ISSUER || `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, configuration);
  registerPasswordGrant(provider);
  revokeOnlyTheAccessToken(provider);
  provider.use(statsMiddleware());

  for (const event of ['server_error', 'grant.error', 'introspection.error', 'revocation.error',
    'userinfo.error', 'end_session.error', 'backchannel.error', 'authorization.error']) {
    provider.on(event, (...args) => {
      const err = args.find((a) => a instanceof Error);
      log(`${event}: ${err ? `${err.message}${err.error_description ? ` (${err.error_description})` : ''}` : ''}`);
    });
  }

  server.on('request', provider.callback());
  const stop = (signal) => {
    log(`${signal}, exiting`);
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  log(`issuer ${issuer}, keys ${configuration.jwks.keys.map((k) => `${k.kid}(${k.kty})`).join(' ')}, `
    + `refresh token rotation ${cfg.rotateRt ? 'on' : 'off'}`);
  process.stdout.write(`READY ${issuer}\n`);
}

main().catch((err) => {
  log(`fatal: ${err.stack || err}`);
  process.exit(1);
});
