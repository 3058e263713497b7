// A real OpenID Connect provider for gpuhub's browser test (tests/e2e/test_browser_login.py):
// panva's oidc-provider with one confidential client and a fixed set of accounts, each
// with a password and a `groups` claim. It stands for a university SSO or Keycloak.
//
// Usage: node provider.mjs CONFIG.json
//   {"issuer": "http://10.253.200.1:9000", "host": "10.253.200.1", "port": 9000,
//    "client": {"client_id": "...", "client_secret": "...", "redirect_uris": ["..."]},
//    "accounts": {"student1": {"password": "...", "groups": ["cs101"]}}}
//
// The login page is a minimal custom interaction (a form that checks the password), not
// oidc-provider's devInteractions, whose page loads web fonts from the internet. The
// client is first-party, so consent is granted without asking, as campus SSOs do.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { accounts } = config;

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function account(id) {
  if (!Object.hasOwn(accounts, id)) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        preferred_username: id,
        name: id,
        email: `${id}@university.example`,
        email_verified: true,
        groups: accounts[id].groups,
      };
    },
  };
}

const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
  .export({ format: 'jwk' });

async function logoutSource(ctx, form) {
  ctx.type = 'html';
  ctx.body = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>University SSO: sign out</title></head>
<body><h1>University SSO</h1><p>Sign out of the university SSO?</p>${form}
<button type="submit" form="op.logoutForm" value="yes" name="logout" id="sign-out">Yes, sign me out</button>
</body></html>`;
}

const provider = new Provider(config.issuer, {
  clients: [{
    // after logout the provider sends the browser back to the hub's login page
    post_logout_redirect_uris: config.client.redirect_uris.map((u) => u.replace(/oauth_callback$/, 'login')),
    ...config.client,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    // oauthenticator sends the secret in the token request's body by default
    token_endpoint_auth_method: 'client_secret_post',
  }],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'email', 'groups'],
  cookies: { keys: [randomBytes(32).toString('hex')] },
  // an hour is longer than any test; fixed values keep oidc-provider's notices quiet
  ttl: { AccessToken: 3600, AuthorizationCode: 600, Grant: 3600, IdToken: 3600, Interaction: 600, Session: 3600 },
  jwks: { keys: [{ ...signingKey, kid: 'e2e', use: 'sig', alg: 'RS256' }] },
  features: {
    devInteractions: { enabled: false },
    // RP-initiated logout (the hub's /hub/logout sends students here): a page of our own,
    // without the default one's web fonts from the internet
    rpInitiatedLogout: { enabled: true, logoutSource },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: (ctx, id) => account(id),
  // first-party client: grant what it asks for, no consent screen
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    if (grantId) return oidc.provider.Grant.find(grantId);
    const grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    grant.addOIDCScope(oidc.params.scope);
    await grant.save();
    return grant;
  },
});

function loginPage(uid, error) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>University SSO: sign in</title>
<style>body{font-family:sans-serif;max-width:22em;margin:4em auto}input,button{display:block;box-sizing:border-box;width:100%;margin:.5em 0;padding:.5em}
.error{color:#b00}</style></head>
<body><h1>University SSO</h1><p>Sign in with your university account.</p>
${error ? `<p class="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
<label>Username <input name="login" id="login" required autofocus></label>
<label>Password <input name="password" id="password" type="password" required></label>
<button type="submit" id="sign-in">Sign in</button></form></body></html>`;
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; if (body.length > 10000) req.destroy(); });
    req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(body))));
    req.on('error', reject);
  });
}

async function interaction(req, res) {
  const [, , uid, action] = new URL(req.url, config.issuer).pathname.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (req.method === 'GET') {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    return res.end(loginPage(uid));
  }
  if (req.method === 'POST' && action === 'login') {
    const { login, password } = await readForm(req);
    if (!Object.hasOwn(accounts, login) || accounts[login].password !== password) {
      console.log(`oidc: wrong user name or password for ${JSON.stringify(login)}`);
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
      return res.end(loginPage(uid, 'Wrong user name or password.'));
    }
    console.log(`oidc: ${login} signed in (groups: ${accounts[login].groups.join(', ')})`);
    return provider.interactionFinished(req, res, { login: { accountId: login } },
      { mergeWithLastSubmission: false });
  }
  res.writeHead(405);
  return res.end();
}

const callback = provider.callback();
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((e) => {
      console.log(`oidc: interaction failed: ${e}`);
      if (!res.headersSent) res.writeHead(400, { 'Content-Type': 'text/plain' });
      res.end(`interaction failed: ${e.message}`);
    });
  } else {
    callback(req, res);
  }
});
provider.on('server_error', (ctx, e) => console.log(`oidc: server error: ${e.stack}`));
server.listen(config.port, config.host, () => {
  console.log(`oidc: issuer ${config.issuer} listening on ${config.host}:${config.port}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
