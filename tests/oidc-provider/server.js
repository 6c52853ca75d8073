// A real OpenID provider (panva/oidc-provider, OpenID Certified) on loopback for Postern's
// end-to-end tests. Started as `node tests/oidc-provider/server.js`; configured only through
// environment variables:
//
//   OIDC_PORT           port to listen on (127.0.0.1 only); issuer is http://127.0.0.1:PORT
//   OIDC_CLIENT_ID      the one confidential client (client_secret_basic or client_secret_post)
//   OIDC_CLIENT_SECRET
//   OIDC_REDIRECT_URIS  comma-separated redirect URIs registered for that client
//   OIDC_USERS          JSON array of {username, password, sub, email, name, groups: [..], mfa}
//
// Authorization code flow only, PKCE (S256) required, scopes openid profile email groups. The ID
// token carries email, name, preferred_username, groups, amr (["pwd","mfa"] or ["pwd"]) and auth_time. Signing keys
// and all storage live in memory: a restart means new keys (new `kid`) and no old sessions.
//
// The login form is deliberately plain so a test can drive it with curl:
//   GET  /interaction/:uid        -> HTML form posting login/password to /interaction/:uid/login
//   POST /interaction/:uid/login  -> wrong password: the form again with "invalid credentials";
//                                    right password: 303 back into the authorization endpoint,
//                                    which redirects to redirect_uri with code and state.
//   GET  /interaction/:uid/abort  -> the person cancels: back to redirect_uri with
//                                    error=access_denied and the state (the standard way).
// Consent is granted automatically (loadExistingGrant), so there is no second page.
//
// Prints `oidc-provider listening on http://127.0.0.1:PORT` on stdout once it accepts requests.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

function fail(msg) {
  process.stderr.write(`oidc-provider fixture: ${msg}\n`);
  process.exit(2);
}

function env(name) {
  const v = process.env[name];
  if (v === undefined || v === '') fail(`${name} must be set`);
  return v;
}

const port = Number.parseInt(env('OIDC_PORT'), 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) fail('OIDC_PORT must be a port number');
const issuer = `http://127.0.0.1:${port}`;
const clientId = env('OIDC_CLIENT_ID');
const clientSecret = env('OIDC_CLIENT_SECRET');
const redirectUris = env('OIDC_REDIRECT_URIS').split(',').map((s) => s.trim()).filter(Boolean);

let users;
try {
  users = JSON.parse(env('OIDC_USERS'));
} catch (e) {
  fail(`OIDC_USERS is not JSON: ${e.message}`);
}
if (!Array.isArray(users)) fail('OIDC_USERS must be a JSON array');
for (const u of users) {
  for (const k of ['username', 'password', 'sub']) {
    if (typeof u[k] !== 'string' || !u[k]) fail(`every user needs a string ${k}`);
  }
}
const bySub = new Map(users.map((u) => [u.sub, u]));
const byUsername = new Map(users.map((u) => [u.username, u]));

// A fresh RSA signing key per process: restarting the provider rotates the JWKS.
function signingKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomBytes(12).toString('base64url'), alg: 'RS256', use: 'sig' };
}

const html = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

const configuration = {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    // client_secret_post is accepted too: oidc-provider treats the two as interchangeable.
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
    // auth_time in every ID token, not only when max_age is requested.
    require_auth_time: true,
  }],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  jwks: { keys: [signingKey()] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  pkce: { required: () => true }, // S256 is the only method oidc-provider 9 supports
  responseTypes: ['code'],
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: {
    // amr rides on the openid scope so it is always in the ID token (oidc-provider only emits
    // claims that a granted scope or the claims parameter asks for).
    openid: ['sub', 'amr'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    amr: null,
    auth_time: null,
    sid: null,
    iss: null,
  },
  // Put the scope claims (email, name, groups) in the ID token too, not only in userinfo.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
    revocation: { enabled: false },
    introspection: { enabled: false },
    rpInitiatedLogout: { enabled: false },
  },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    IdToken: 600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
  interactions: {
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  async findAccount(ctx, sub) {
    const u = bySub.get(sub);
    if (!u) return undefined;
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          email: u.email,
          email_verified: u.email !== undefined,
          name: u.name,
          preferred_username: u.username,
          groups: Array.isArray(u.groups) ? u.groups : [],
        };
      },
    };
  },
  // No consent page: every authorization request is granted the scopes and claims it asks for.
  async loadExistingGrant(ctx) {
    const { client, session, params } = ctx.oidc;
    const accountId = session?.accountId;
    if (!accountId) return undefined;
    const { Grant } = ctx.oidc.provider;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    let grant = grantId ? await Grant.find(grantId) : undefined;
    if (!grant || grant.accountId !== accountId) {
      grant = new Grant({ clientId: client.clientId, accountId });
    }
    if (params?.scope) grant.addOIDCScope(String(params.scope));
    if (params?.claims) {
      try {
        const requested = typeof params.claims === 'string' ? JSON.parse(params.claims) : params.claims;
        const names = new Set([
          ...Object.keys(requested?.id_token ?? {}),
          ...Object.keys(requested?.userinfo ?? {}),
        ]);
        if (names.size) grant.addOIDCClaims([...names]);
      } catch {
        // oidc-provider itself rejects malformed claims parameters
      }
    }
    await grant.save();
    return grant;
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>oidc-provider error</title><h1>${html(out.error)}</h1>`
      + `<p>${html(out.error_description ?? '')}</p>`;
  },
};

const provider = new Provider(issuer, configuration);

function loginPage(uid, message) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Test IdP sign-in</title></head>
<body>
<h1>Test IdP sign-in</h1>
${message ? `<p class="error">${html(message)}</p>` : ''}
<form method="post" action="/interaction/${html(uid)}/login">
<label>Username <input type="text" name="login" autocomplete="username" autofocus></label>
<label>Password <input type="password" name="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form>
<p><a id="cancel" href="/interaction/${html(uid)}/abort">Cancel</a></p>
</body></html>
`;
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (e) {
    // Unknown/expired interaction or missing interaction cookie.
    return send(res, 400, `<!doctype html><title>sign-in expired</title><h1>sign-in expired</h1><p>${html(e.message)}</p>`);
  }
  if (details.uid !== uid) {
    return send(res, 400, '<!doctype html><title>sign-in expired</title><h1>interaction mismatch</h1>');
  }

  if (action === undefined && req.method === 'GET') {
    return send(res, 200, loginPage(uid));
  }
  if (action === 'login' && req.method === 'POST') {
    const form = await readForm(req);
    const user = byUsername.get(form.get('login') ?? '');
    const password = form.get('password') ?? '';
    const ok = user !== undefined
      && crypto.timingSafeEqual(
        crypto.createHash('sha256').update(password).digest(),
        crypto.createHash('sha256').update(user.password).digest(),
      );
    if (!ok) {
      return send(res, 200, loginPage(uid, 'invalid credentials'));
    }
    const result = {
      login: {
        accountId: user.sub,
        amr: user.mfa ? ['pwd', 'mfa'] : ['pwd'],
        remember: false,
      },
    };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }
  if (action === 'abort' && req.method === 'GET') {
    const result = { error: 'access_denied', error_description: 'End-User aborted interaction' };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }
  return send(res, 405, 'method not allowed\n', 'text/plain');
}

const handler = provider.callback();
const server = http.createServer((req, res) => {
  const url = new URL(req.url, issuer);
  const m = /^\/interaction\/([^/]+)(?:\/(login|abort))?\/?$/.exec(url.pathname);
  if (m) {
    interaction(req, res, decodeURIComponent(m[1]), m[2]).catch((e) => {
      process.stderr.write(`interaction error: ${e.stack ?? e}\n`);
      if (!res.headersSent) send(res, 500, 'interaction error\n', 'text/plain');
      else res.end();
    });
    return;
  }
  handler(req, res);
});

provider.on('server_error', (ctx, e) => process.stderr.write(`server_error: ${e.stack ?? e}\n`));

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`oidc-provider listening on ${issuer}\n`);
});
