#!/usr/bin/env node
// Generate a private JWKS for the test IdP (scripts/idp/server.mjs reads it through IDP_KEYS).
//
//   node scripts/idp/genkeys.mjs OUT.json [--kid NAME] [--alg RS256|ES256|ES512] [--append]
//
// Writes {"keys":[<private JWK>]} to OUT.json. With --append the key is added to the keys already in
// OUT.json (the new key goes first, so the provider signs with it while the old one stays published:
// the key-overlap half of a rotation test). Without --kid a random kid is chosen.
// Uses node's own crypto so it works before `npm ci` has run.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const USAGE = 'usage: genkeys.mjs OUT.json [--kid NAME] [--alg RS256|ES256|ES512] [--append]';

function parseArgs(argv) {
  const opts = { out: undefined, kid: undefined, alg: 'RS256', append: false };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--kid' || arg === '--alg') {
      const value = argv[i + 1];
      if (value === undefined) throw new Error(`${arg} needs a value\n${USAGE}`);
      opts[arg.slice(2)] = value;
      i += 1;
    } else if (arg === '--append') {
      opts.append = true;
    } else if (arg === '-h' || arg === '--help') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else if (arg.startsWith('-') || opts.out !== undefined) {
      throw new Error(`unexpected argument ${arg}\n${USAGE}`);
    } else {
      opts.out = arg;
    }
  }
  if (opts.out === undefined) throw new Error(USAGE);
  if (!['RS256', 'ES256', 'ES512'].includes(opts.alg)) {
    throw new Error(`--alg must be RS256, ES256 or ES512, got ${opts.alg}`);
  }
  return opts;
}

export function generateJwk(alg, kid = randomBytes(6).toString('hex')) {
  const curve = { ES256: 'P-256', ES512: 'P-521' }[alg];
  const { privateKey } = curve
    ? generateKeyPairSync('ec', { namedCurve: curve })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  let keys = [];
  if (opts.append && existsSync(opts.out)) {
    keys = JSON.parse(readFileSync(opts.out, 'utf8')).keys ?? [];
  }
  const jwk = generateJwk(opts.alg, opts.kid);
  if (keys.some((k) => k.kid === jwk.kid)) {
    throw new Error(`kid ${jwk.kid} already present in ${opts.out}`);
  }
  keys.unshift(jwk);
  // 0600: these are private keys, even if only test ones.
  writeFileSync(opts.out, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600 });
  process.stderr.write(`wrote ${opts.alg} key kid=${jwk.kid} to ${opts.out} (${keys.length} key(s))\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    main();
  } catch (err) {
    process.stderr.write(`genkeys: ${err.message}\n`);
    process.exit(2);
  }
}
