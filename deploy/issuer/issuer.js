// Development OpenID Connect issuer: panva's oidc-provider (OpenID Certified), configured for the client
// credentials grant only, so that local runs, tests and docker compose get real RS256/ES256 JWT access tokens
// without a network. FOR DEVELOPMENT ONLY: every client shares one secret and a user client is anyone who
// knows it. oidc-provider 8.x is end of life (Node 18/20); do not put this in front of real users.
//
//   node deploy/issuer/issuer.js           serve (settings below; the repository's .env gives defaults,
//                                          the environment overrides it, as for the services)
//   node deploy/issuer/issuer.js rotate    put a new RS256 signing key in front of the keys file
//
// Clients (client_secret_basic or client_secret_post, secret DEV_ISSUER_SECRET, client_credentials only):
//   user-<N>    N a positive integer, no leading zeros, at most 15 digits (exact as a JSON number); its
//               tokens carry AUTH_USER_CLAIM: N; it may ask for scope shop:topup
//   shop-admin  an operator or machine; it may ask for scope shop:admin and carries no user claim
// A scope is granted only when asked for (`scope=...`): a token without one has no `scope` claim (RFC 9068).
// Asking for a scope the client may not have is refused with invalid_scope rather than dropped silently.
// The request parameter `alg` (RS256 or ES256) overrides DEV_ISSUER_ALG for one token.
//
// Key rotation, with no token failing verification on the way:
//   1. node deploy/issuer/issuer.js rotate   the new key is published at the next start, the old ones stay
//   2. restart the issuer                    the new key signs (oidc-provider signs with the first key of
//                                            an alg); services refetch the JWKS on the unknown kid
//   3. after DEV_ISSUER_TOKEN_TTL seconds    optionally delete the old key from the file (no token it signed
//                                            is still valid) and restart again
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import Provider, { errors } from 'oidc-provider';
// The library's own in-memory store for the models other than Client: a client-credentials issuer with JWT
// access tokens stores nothing there. Imported by path, which the exact version pin keeps valid.
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const ALGS = new Set(['RS256', 'ES256']);
const USER_CLIENT = /^user-([1-9][0-9]{0,14})$/;
const ADMIN_CLIENT = 'shop-admin';

function fail(message) {
  console.error(`dev issuer: ${message}`);
  process.exit(1);
}

// The services' dotenv format (common/runtime/config.py read_env_file): KEY=value, comments and blank lines skipped.
function readEnvFile(file) {
  if (!fs.existsSync(file)) return {};
  const values = {};
  for (let line of fs.readFileSync(file, 'utf8').split('\n')) {
    line = line.trim();
    if (!line || line.startsWith('#') || !line.includes('=')) continue;
    const at = line.indexOf('=');
    values[line.slice(0, at).trim()] = line.slice(at + 1).trim().replace(/^"+|"+$/g, '').replace(/^'+|'+$/g, '');
  }
  return values;
}

const env = { ...readEnvFile(path.join(ROOT, '.env')), ...process.env };
const setting = (name, fallback) => (env[name] ? env[name] : fallback);

// Keys live in a private JWKS file so that tokens stay valid across restarts. The default is per user in the
// temporary directory: losing it (a reboot) only means new keys, and development tokens are short-lived.
const KEYS_FILE = path.resolve(
  setting('DEV_ISSUER_KEYS', path.join(os.tmpdir(), `shop-dev-issuer-keys-${process.getuid()}.json`)),
);

function newKey(alg) {
  const { privateKey } = alg === 'RS256'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  // A kid that says what and when, so logs and JWKS dumps read at a glance.
  const day = new Date().toISOString().slice(0, 10).replaceAll('-', '');
  const kid = `${alg.toLowerCase()}-${day}-${crypto.randomBytes(4).toString('hex')}`;
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg };
}

// Written to a temporary file and renamed, so that an issuer starting meanwhile never reads half a file.
function writeKeys(jwks) {
  fs.mkdirSync(path.dirname(KEYS_FILE), { recursive: true, mode: 0o700 });
  const temporary = `${KEYS_FILE}.${process.pid}.tmp`;
  fs.writeFileSync(temporary, `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o600 });
  fs.renameSync(temporary, KEYS_FILE);
}

function loadKeys() {
  if (!fs.existsSync(KEYS_FILE)) {
    writeKeys({ keys: [newKey('RS256'), newKey('ES256')] });
    console.log(`dev issuer: generated new keys in ${KEYS_FILE}`);
  }
  try {
    return JSON.parse(fs.readFileSync(KEYS_FILE, 'utf8'));
  } catch (err) {
    return fail(`cannot read the keys file ${KEYS_FILE} (DEV_ISSUER_KEYS): ${err.message}`);
  }
}

function rotate() {
  const jwks = loadKeys();
  const key = newKey('RS256');
  writeKeys({ keys: [key, ...jwks.keys] });
  console.log(`dev issuer: added signing key ${key.kid} to ${KEYS_FILE}; it signs after the issuer's next start`);
}

function userIdOf(clientId) {
  const match = USER_CLIENT.exec(clientId);
  return match ? Number(match[1]) : undefined;
}

// Clients are synthesized on lookup (the adapter of the Client model) rather than listed: any user id works.
function clientAdapter(secret) {
  return {
    async find(clientId) {
      if (clientId !== ADMIN_CLIENT && userIdOf(clientId) === undefined) return undefined; // invalid_client
      return {
        client_id: clientId,
        client_secret: secret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      };
    },
  };
}

function serve() {
  const issuer = setting('AUTH_ISSUER', 'http://localhost:8083');
  const audience = setting('AUTH_AUDIENCE', 'urn:shop:api');
  const userClaim = setting('AUTH_USER_CLAIM', 'shop_user_id');
  const secret = setting('DEV_ISSUER_SECRET', '');
  const defaultAlg = setting('DEV_ISSUER_ALG', 'RS256');
  const ttl = Number(setting('DEV_ISSUER_TOKEN_TTL', '600'));
  const port = Number(setting('DEV_ISSUER_PORT', '8083'));
  const address = setting('DEV_ISSUER_LISTEN_ADDRESS', '127.0.0.1');

  if (secret.length < 16) fail('DEV_ISSUER_SECRET must be set to at least 16 characters (the secret of every client)');
  if (!ALGS.has(defaultAlg)) fail(`DEV_ISSUER_ALG must be RS256 or ES256, not ${defaultAlg}`);
  if (!Number.isInteger(ttl) || ttl <= 0) fail('DEV_ISSUER_TOKEN_TTL must be a positive number of seconds');
  if (!Number.isInteger(port) || port <= 0 || port > 65535) fail('DEV_ISSUER_PORT must be a port number');
  // oidc-provider serves discovery at the root, so an issuer with a path would name a document nobody serves.
  if (!URL.canParse(issuer) || new URL(issuer).pathname !== '/') fail(`AUTH_ISSUER must be a URL, no path: ${issuer}`);

  const jwks = loadKeys();
  const provider = new Provider(issuer, {
    adapter: (model) => (model === 'Client' ? clientAdapter(secret) : new MemoryAdapter(model)),
    jwks,
    // No sign-in pages: tokens come from the client credentials grant alone.
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Without a default, a request without `resource=` would get an opaque token instead of a JWT.
        defaultResource: () => audience,
        // The API scopes live here, per client: as client metadata oidc-provider refuses them.
        getResourceServerInfo(ctx, resource, client) {
          if (resource !== audience) throw new errors.InvalidTarget();
          const allowed = client.clientId === ADMIN_CLIENT ? 'shop:admin' : 'shop:topup';
          const refused = (ctx.oidc.params.scope || '').split(' ').filter((scope) => scope && scope !== allowed);
          if (refused.length) throw new errors.InvalidScope('requested scope is not allowed', refused.join(' '));
          // A non-standard request parameter, read from the raw body because oidc-provider drops unknown ones.
          const alg = ctx.oidc.body.alg ?? defaultAlg;
          if (!ALGS.has(alg)) throw new errors.InvalidRequest('alg must be RS256 or ES256');
          return { scope: allowed, audience, accessTokenFormat: 'jwt', jwt: { sign: { alg } } };
        },
      },
    },
    extraTokenClaims(ctx, token) {
      const userId = userIdOf(token.clientId);
      return userId === undefined ? undefined : { [userClaim]: userId };
    },
    ttl: { ClientCredentials: ttl },
    // Cookies serve only the interactive flows this issuer does not offer; keys keep the library from warning.
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  });
  provider.on('server_error', (ctx, err) => console.error('dev issuer: server error:', err));
  // Refusals are logged with oidc-provider's detail (e.g. which check failed), which the client is not told.
  provider.on('grant.error', (ctx, err) => {
    const client = ctx.oidc.client ? ` ${ctx.oidc.client.clientId}` : '';
    const why = err.error_detail ?? err.error_description;
    console.error(`dev issuer: refused a token request${client}: ${err.error}: ${why}`);
  });

  const server = http.createServer(provider.callback());
  server.on('error', (err) => fail(`cannot listen on ${address}:${port}: ${err.message}`));
  server.listen(port, address, () => {
    const kids = jwks.keys.map((key) => key.kid).join(' ');
    console.log(`dev issuer ${issuer} listening on ${address}:${port}, keys ${kids}`);
    console.log('dev issuer: WARNING: for development and tests only; every client shares DEV_ISSUER_SECRET');
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

switch (process.argv[2]) {
  case undefined: serve(); break;
  case 'rotate': rotate(); break;
  default: fail('usage: node deploy/issuer/issuer.js [rotate]');
}
