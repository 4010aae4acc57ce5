// S1–S5 against a real `ecom gateway` (memory mode, APP_ENV=development) at
// AUTHX_BASE_URL; tests/scripts/sdk_js.sh starts one and runs these.
// S2 also needs a second origin: a local HTTP server that records what it got.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';

import { AuthError, createAuthClient } from '../index.js';

const BASE = process.env.AUTHX_BASE_URL;
if (!BASE) throw new Error('AUTHX_BASE_URL is not set: run tests/scripts/sdk_js.sh, which starts a gateway');

// An access token the gateway must refuse (bad signature) that the client takes
// for a good one (readable, far from exp): the way to provoke a 401 at will.
function forgedAccessToken(sub) {
    const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const exp = Math.floor(Date.now() / 1000) + 3600;
    return `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, exp, token_use: 'access' })}.${'A'.repeat(43)}`;
}

function expOf(accessToken) {
    return JSON.parse(Buffer.from(accessToken.split('.')[1], 'base64url').toString()).exp;
}

function store(initial = null) {
    const s = {
        tokens: initial,
        sets: [],
        getTokens: () => s.tokens,
        setTokens: (t) => {
            s.sets.push(t);
            s.tokens = t;
        },
    };
    return s;
}

// The real fetch, with a record of every call: path, Authorization, status.
// With holdRefreshFor = N, a refresh waits until N requests have got their 401,
// so that all N are waiting while it is in flight (at most 5 s).
function recordingFetch({ holdRefreshFor = 0 } = {}) {
    const calls = [];
    let release;
    const all401 = new Promise((resolve) => (release = resolve));
    const fetch = async (url, init = {}) => {
        const call = {
            path: new URL(url).pathname.replace(new URL(BASE).pathname, ''),
            authorization: new Headers(init.headers).get('authorization'),
        };
        calls.push(call);
        if (call.path === '/auth/refresh' && holdRefreshFor)
            await Promise.race([all401, new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
        const res = await globalThis.fetch(url, init);
        call.status = res.status;
        if (calls.filter((c) => c.status === 401 && c.path !== '/auth/refresh').length >= holdRefreshFor) release();
        return res;
    };
    return { fetch, calls, count: (path) => calls.filter((c) => c.path === path).length };
}

// dev-login straight to the gateway, without the client under test.
async function devLogin(userId) {
    const res = await fetch(`${BASE}/auth/dev-login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ userId }),
    });
    assert.equal(res.status, 200, `dev-login answered ${res.status}: ${await res.clone().text()}`);
    const { accessToken, refreshToken, sessionId } = await res.json();
    return { accessToken, refreshToken, sessionId };
}

async function rawRefresh(refreshToken) {
    const res = await fetch(`${BASE}/auth/refresh`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ refreshToken }),
    });
    return { status: res.status, body: await res.json().catch(() => null) };
}

async function principalOf(res) {
    assert.equal(res.status, 200);
    return (await res.json()).principal?.userId;
}

test('S1 login({userId}) calls setTokens once with the triple, and the token authenticates /me', async () => {
    const st = store();
    const f = recordingFetch();
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    const tokens = await auth.login({ userId: 'u1' });

    assert.equal(st.sets.length, 1);
    assert.deepEqual(st.sets[0], tokens);
    assert.deepEqual(Object.keys(tokens).sort(), ['accessToken', 'refreshToken', 'sessionId']);
    for (const v of Object.values(tokens)) assert.ok(typeof v === 'string' && v.length > 0);

    const res = await auth.fetchWithAuth('/me');
    assert.equal(await principalOf(res), 'u1');
    assert.equal(f.calls.at(-1).authorization, `Bearer ${tokens.accessToken}`);
});

test('S1 a refused OTP login throws AuthError with the 401 and its detail; setTokens is not called', async () => {
    const st = store();
    const auth = createAuthClient({ baseUrl: BASE, ...st });

    await assert.rejects(auth.login({ ticketId: 'no-such-ticket', code: '000000' }), (err) => {
        assert.ok(err instanceof AuthError);
        assert.equal(err.status, 401);
        assert.ok(err.detail.length > 0);
        assert.equal(err.detail, err.problem.detail);
        assert.ok(err.problem.requestId);
        return true;
    });
    assert.deepEqual(st.sets, []);
});

test('S2 fetchWithAuth to another origin sends no Authorization header and does not refresh on its 401', async (t) => {
    const seen = [];
    const other = http.createServer((req, res) => {
        seen.push(req.headers.authorization);
        res.writeHead(401, { 'content-type': 'application/problem+json' });
        res.end('{"title":"Unauthorized","status":401}');
    });
    await new Promise((resolve) => other.listen(0, '127.0.0.1', resolve));
    t.after(() => {
        other.closeAllConnections();
        other.close();
    });
    const otherBase = `http://127.0.0.1:${other.address().port}`;

    const st = store();
    const f = recordingFetch();
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });
    await auth.login({ userId: 'u2' });

    const res = await auth.fetchWithAuth(`${otherBase}${new URL(BASE).pathname}/me`);
    assert.equal(res.status, 401);
    assert.deepEqual(seen, [undefined]);
    assert.equal(f.count('/auth/refresh'), 0);

    // The same client does send it to the gateway's origin.
    assert.equal(await principalOf(await auth.fetchWithAuth('/me')), 'u2');
    assert.equal(f.calls.at(-1).authorization, `Bearer ${st.tokens.accessToken}`);
});

test('S3 N concurrent 401s cause exactly one refresh; each request is retried once with the new token', async () => {
    const N = 8;
    const good = await devLogin('u3');
    const forged = forgedAccessToken('u3');
    const st = store({ ...good, accessToken: forged });
    const f = recordingFetch({ holdRefreshFor: N });
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    const responses = await Promise.all(Array.from({ length: N }, () => auth.fetchWithAuth('/me')));

    for (const res of responses) assert.equal(await principalOf(res), 'u3');
    assert.equal(f.count('/auth/refresh'), 1);
    const me = f.calls.filter((c) => c.path === '/me');
    assert.equal(me.length, 2 * N);
    assert.equal(me.filter((c) => c.status === 401 && c.authorization === `Bearer ${forged}`).length, N);
    assert.equal(me.filter((c) => c.status === 200 && c.authorization === `Bearer ${st.tokens.accessToken}`).length, N);

    // The rotated refresh token was stored: it works, where the spent one would
    // now be refused (and revoke the session).
    assert.equal(st.sets.length, 1);
    assert.notEqual(st.tokens.refreshToken, good.refreshToken);
    await auth.refresh();
    assert.equal(f.calls.at(-1).status, 200);
});

test('S4 a rotated refresh token: the refresh gets 401, setTokens(null), every waiter gets AuthError, no loop', async () => {
    const N = 4;
    const spent = await devLogin('u4');
    assert.equal((await rawRefresh(spent.refreshToken)).status, 200); // rotates it
    const st = store({ ...spent, accessToken: forgedAccessToken('u4') });
    const f = recordingFetch({ holdRefreshFor: N });
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    const results = await Promise.allSettled(Array.from({ length: N }, () => auth.fetchWithAuth('/me')));

    for (const r of results) {
        assert.equal(r.status, 'rejected');
        assert.ok(r.reason instanceof AuthError, String(r.reason));
        assert.equal(r.reason.status, 401);
    }
    assert.deepEqual(st.sets, [null]);
    assert.equal(f.count('/auth/refresh'), 1);
    assert.equal(f.calls.find((c) => c.path === '/auth/refresh').status, 401);
    assert.equal(f.count('/me'), N);
});

test('S4 after logout: the refresh token is refused, setTokens(null), AuthError, no loop', async () => {
    const st = store();
    const f = recordingFetch();
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });
    const tokens = await auth.login({ userId: 'u5' });

    await auth.logout();
    const out = f.calls.at(-1);
    assert.deepEqual([out.path, out.authorization], ['/auth/logout', `Bearer ${tokens.accessToken}`]);
    assert.ok(out.status >= 200 && out.status < 300, `logout answered ${out.status}`);
    assert.equal(st.tokens, null);

    st.tokens = { ...tokens, accessToken: forgedAccessToken('u5') };
    st.sets.length = 0;
    await assert.rejects(auth.fetchWithAuth('/me'), { name: 'AuthError', status: 401 });
    assert.deepEqual(st.sets, [null]);
    assert.equal(f.count('/auth/refresh'), 1);
    assert.equal(f.calls.filter((c) => c.path === '/me').length, 1);
});

test('S5 with 20 s left before exp the client refreshes before the request; with 40 s it does not', async () => {
    let clock = 0;
    const st = store();
    const f = recordingFetch();
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch, now: () => clock });
    const first = await auth.login({ userId: 'u6' });
    const exp = expOf(first.accessToken);

    clock = exp * 1000 - 40_000;
    assert.equal(await principalOf(await auth.fetchWithAuth('/me')), 'u6');
    assert.equal(f.count('/auth/refresh'), 0);

    clock = exp * 1000 - 20_000;
    const before = f.calls.length;
    assert.equal(await principalOf(await auth.fetchWithAuth('/me')), 'u6');

    assert.deepEqual(
        f.calls.slice(before).map((c) => [c.path, c.status]),
        [
            ['/auth/refresh', 200],
            ['/me', 200],
        ],
    );
    assert.notEqual(st.tokens.refreshToken, first.refreshToken);
    assert.equal(f.calls.at(-1).authorization, `Bearer ${st.tokens.accessToken}`);
});
