// Edge cases of the client against a scripted fetch: what it sends, when it
// refreshes, and how failures reach every caller. The same rows are checked
// against a real gateway in gateway.test.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { AuthError, createAuthClient } from '../index.js';

const BASE = 'https://api.example.test/api/v1/analytics';

// A JWT whose payload says what the test needs; the signature is never checked
// by the client.
function jwt(payload) {
    const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    return `${part({ alg: 'HS256', typ: 'JWT' })}.${part(payload)}.c2ln`;
}

const FAR = 4_102_444_800; // 2100-01-01: never near expiry

function problem(status, detail) {
    return new Response(JSON.stringify({ title: 'Unauthorized', status, detail, requestId: 'r1' }), {
        status,
        headers: { 'content-type': 'application/problem+json' },
    });
}

function json(body, status = 200) {
    return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
}

// A token store that records every setTokens call.
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

// A fetch that records each call (url, method, Authorization, body) and answers
// with route(call), which may return a promise to hold the answer back.
function fakeFetch(route) {
    const calls = [];
    const fetch = async (url, init = {}) => {
        const call = {
            url: String(url),
            path: new URL(url).pathname,
            method: init.method ?? 'GET',
            authorization: new Headers(init.headers).get('authorization'),
            body: init.body === undefined ? undefined : JSON.parse(init.body),
        };
        calls.push(call);
        return route(call);
    };
    return { fetch, calls, count: (path) => calls.filter((c) => c.path.endsWith(path)).length };
}

const okTokens = (n) => ({ accessToken: jwt({ exp: FAR, n }), refreshToken: `r${n}`, sessionId: 's1' });

test('S1 login({userId}) posts to dev-login and calls setTokens once with the triple', async () => {
    const st = store();
    const f = fakeFetch(() => json({ ok: true, ...okTokens(1), expiresIn: 600 }));
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    const tokens = await auth.login({ userId: 'u1' });

    assert.deepEqual(tokens, okTokens(1));
    assert.deepEqual(st.sets, [okTokens(1)]);
    assert.equal(f.calls.length, 1);
    assert.equal(f.calls[0].url, `${BASE}/auth/dev-login`);
    assert.equal(f.calls[0].method, 'POST');
    assert.deepEqual(f.calls[0].body, { userId: 'u1' });
});

test('S1 login({ticketId, code}) posts to otp/verify', async () => {
    const st = store();
    const f = fakeFetch(() => json({ ok: true, ...okTokens(1) }));
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    await auth.login({ ticketId: 't1', code: '123456' });

    assert.equal(f.calls[0].url, `${BASE}/auth/otp/verify`);
    assert.deepEqual(f.calls[0].body, { ticketId: 't1', code: '123456' });
    assert.deepEqual(st.sets, [okTokens(1)]);
});

test('S1 a refused login throws AuthError with the status and detail; no tokens are stored', async () => {
    const st = store();
    const f = fakeFetch(() => problem(401, 'the code is wrong, expired or already used'));
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    await assert.rejects(auth.login({ ticketId: 't1', code: '000000' }), (err) => {
        assert.ok(err instanceof AuthError);
        assert.equal(err.status, 401);
        assert.equal(err.detail, 'the code is wrong, expired or already used');
        assert.equal(err.problem.requestId, 'r1');
        return true;
    });
    assert.deepEqual(st.sets, []);
});

test('relative paths hang under baseUrl, absolute URLs are used as is', async () => {
    const st = store(okTokens(1));
    const f = fakeFetch(() => json({}));
    const auth = createAuthClient({ baseUrl: BASE + '/', ...st, fetch: f.fetch });

    await auth.fetchWithAuth('/projects/proj_123/events');
    await auth.fetchWithAuth('me?x=1');
    await auth.fetchWithAuth('https://api.example.test/api/v1/payments/payments/p1');
    await auth.fetchWithAuth('//evil.example/steal');

    assert.deepEqual(
        f.calls.map((c) => c.url),
        [
            `${BASE}/projects/proj_123/events`,
            `${BASE}/me?x=1`,
            'https://api.example.test/api/v1/payments/payments/p1',
            `${BASE}//evil.example/steal`, // stays on our origin: never a host switch
        ],
    );
    const bearer = `Bearer ${okTokens(1).accessToken}`;
    assert.ok(f.calls.every((c) => c.authorization === bearer));
});

test('S2 no Authorization header to another origin (scheme, host or port), and its 401 is not refreshed', async () => {
    const st = store(okTokens(1));
    const f = fakeFetch(() => problem(401, 'no'));
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    for (const url of [
        'http://api.example.test/api/v1/analytics/me',
        'https://api.example.test:8443/api/v1/analytics/me',
        'https://other.example.test/api/v1/analytics/me',
    ]) {
        const res = await auth.fetchWithAuth(url, { headers: { 'x-keep': '1' } });
        assert.equal(res.status, 401);
    }
    assert.equal(f.calls.length, 3);
    assert.ok(f.calls.every((c) => c.authorization === null));
    assert.equal(f.count('/auth/refresh'), 0);
    assert.deepEqual(st.sets, []);
});

test('the caller\'s headers and method are kept beside the bearer token', async () => {
    const st = store(okTokens(1));
    let seen;
    const auth = createAuthClient({
        baseUrl: BASE,
        ...st,
        fetch: async (url, init) => {
            seen = init;
            return json({});
        },
    });

    await auth.fetchWithAuth('/events', { method: 'POST', headers: { 'Idempotency-Key': 'k1' }, body: '{}' });

    const h = new Headers(seen.headers);
    assert.equal(seen.method, 'POST');
    assert.equal(seen.body, '{}');
    assert.equal(h.get('idempotency-key'), 'k1');
    assert.equal(h.get('authorization'), `Bearer ${okTokens(1).accessToken}`);
});

test('a non-401 error is returned as is: no refresh, no retry', async () => {
    for (const status of [400, 403, 404, 500, 503]) {
        const st = store(okTokens(1));
        const f = fakeFetch(() => problem(status, 'x'));
        const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

        const res = await auth.fetchWithAuth('/me');

        assert.equal(res.status, status);
        assert.equal(f.calls.length, 1, `HTTP ${status} was retried`);
        assert.deepEqual(st.sets, []);
    }
});

test('S3 a 401 refreshes, stores the rotated refresh token and retries once with the new token', async () => {
    const st = store(okTokens(1));
    const f = fakeFetch((c) => {
        if (c.path.endsWith('/auth/refresh')) return json({ ok: true, ...okTokens(2), expiresIn: 600 });
        return c.authorization === `Bearer ${okTokens(2).accessToken}` ? json({ me: 1 }) : problem(401, 'expired');
    });
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    const res = await auth.fetchWithAuth('/me');

    assert.equal(res.status, 200);
    assert.deepEqual(
        f.calls.map((c) => c.path.split('/').pop()),
        ['me', 'refresh', 'me'],
    );
    assert.deepEqual(f.calls[1].body, { refreshToken: 'r1' });
    assert.deepEqual(st.sets, [okTokens(2)]);
});

test('S3 N concurrent 401s while the refresh is in flight share one refresh; each request is retried once', async () => {
    const N = 6;
    const st = store(okTokens(1));
    const f = fakeFetch(async (c) => {
        if (c.path.endsWith('/auth/refresh')) {
            await new Promise((r) => setTimeout(r, 20)); // every 401 lands meanwhile
            return json({ ok: true, ...okTokens(2) });
        }
        return c.authorization === `Bearer ${okTokens(2).accessToken}` ? json({}) : problem(401, 'expired');
    });
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    const responses = await Promise.all(Array.from({ length: N }, () => auth.fetchWithAuth('/me')));

    assert.ok(responses.every((r) => r.status === 200));
    assert.equal(f.count('/auth/refresh'), 1);
    assert.equal(f.count('/me'), 2 * N);
    assert.deepEqual(st.sets, [okTokens(2)]);
});

test('S3 a 401 that arrives after the refresh finished retries with the new token, without a second refresh', async () => {
    const st = store(okTokens(1));
    let releaseSlow;
    const slow = new Promise((resolve) => (releaseSlow = resolve));
    let firstMe = true;
    const f = fakeFetch(async (c) => {
        if (c.path.endsWith('/auth/refresh')) return json({ ok: true, ...okTokens(2) });
        if (c.authorization === `Bearer ${okTokens(2).accessToken}`) return json({});
        if (firstMe) {
            firstMe = false;
            return problem(401, 'expired');
        }
        await slow; // held until the other request has refreshed and retried
        return problem(401, 'expired');
    });
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    const fast = auth.fetchWithAuth('/me');
    const late = auth.fetchWithAuth('/me');
    assert.equal((await fast).status, 200);
    releaseSlow();
    assert.equal((await late).status, 200);

    assert.equal(f.count('/auth/refresh'), 1);
    assert.equal(f.count('/me'), 4);
});

test('S4 a refresh failure reaches every concurrent waiter; setTokens(null) once; nothing retried', async () => {
    const st = store(okTokens(1));
    const f = fakeFetch(async (c) => {
        if (c.path.endsWith('/auth/refresh')) {
            await new Promise((r) => setTimeout(r, 20)); // let every request join
            return problem(401, 'refresh token reused');
        }
        return problem(401, 'expired');
    });
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    const results = await Promise.allSettled(Array.from({ length: 5 }, () => auth.fetchWithAuth('/me')));

    for (const r of results) {
        assert.equal(r.status, 'rejected');
        assert.ok(r.reason instanceof AuthError);
        assert.equal(r.reason.status, 401);
    }
    assert.ok(results.some((r) => r.reason.detail === 'refresh token reused'));
    assert.equal(f.count('/auth/refresh'), 1);
    assert.equal(f.count('/me'), 5);
    assert.deepEqual(st.sets, [null]);
});

test('S4 any non-2xx refresh ends the session too', async () => {
    const st = store(okTokens(1));
    const f = fakeFetch((c) => (c.path.endsWith('/auth/refresh') ? problem(400, 'bad body') : problem(401, 'expired')));
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    await assert.rejects(auth.fetchWithAuth('/me'), { name: 'AuthError', status: 400, detail: 'bad body' });
    assert.deepEqual(st.sets, [null]);
});

test('S4 a 401 with the refreshed token is returned, not refreshed again (no loop)', async () => {
    const st = store(okTokens(1));
    const f = fakeFetch((c) =>
        c.path.endsWith('/auth/refresh') ? json({ ok: true, ...okTokens(2) }) : problem(401, 'revoked'),
    );
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    const res = await auth.fetchWithAuth('/me');

    assert.equal(res.status, 401);
    assert.equal(f.count('/auth/refresh'), 1);
    assert.equal(f.count('/me'), 2);
});

test('S4 a 401 after a proactive refresh is returned, not refreshed again (no loop)', async () => {
    const exp = 2_000_000_000;
    const st = store({ accessToken: jwt({ exp }), refreshToken: 'r1', sessionId: 's1' });
    const f = fakeFetch((c) =>
        c.path.endsWith('/auth/refresh') ? json({ ok: true, ...okTokens(2) }) : problem(401, 'revoked'),
    );
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch, now: () => exp * 1000 - 1_000 });

    const res = await auth.fetchWithAuth('/me');

    assert.equal(res.status, 401);
    assert.deepEqual(
        f.calls.map((c) => c.path.split('/').pop()),
        ['refresh', 'me'],
    );
});

test('S5 a token within refreshSkewMs of exp is refreshed before the request; an unreadable one is not', async () => {
    const exp = 2_000_000_000;
    const near = { accessToken: jwt({ exp }), refreshToken: 'r1', sessionId: 's1' };
    let clock = exp * 1000 - 31_000;
    const st = store(near);
    const f = fakeFetch((c) => (c.path.endsWith('/auth/refresh') ? json({ ok: true, ...okTokens(2) }) : json({})));
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch, now: () => clock });

    await auth.fetchWithAuth('/me'); // 31 s left: not yet
    clock += 2_000; // 29 s left
    await auth.fetchWithAuth('/me');

    assert.deepEqual(
        f.calls.map((c) => c.path.split('/').pop()),
        ['me', 'refresh', 'me'],
    );
    assert.equal(f.calls[2].authorization, `Bearer ${okTokens(2).accessToken}`);

    const st2 = store({ accessToken: 'not-a-jwt', refreshToken: 'r1', sessionId: 's1' });
    const f2 = fakeFetch(() => json({}));
    const auth2 = createAuthClient({ baseUrl: BASE, ...st2, fetch: f2.fetch, now: () => clock });
    await auth2.fetchWithAuth('/me');
    assert.equal(f2.count('/auth/refresh'), 0);
});

test('refresh() keeps the sessionId when the answer omits it; without tokens it throws', async () => {
    const st = store(okTokens(1));
    const f = fakeFetch(() => json({ ok: true, accessToken: 'a2', refreshToken: 'r2' }));
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    assert.deepEqual(await auth.refresh(), { accessToken: 'a2', refreshToken: 'r2', sessionId: 's1' });

    st.tokens = null;
    await assert.rejects(auth.refresh(), { name: 'AuthError', status: 0 });
    assert.equal(f.calls.length, 1);
});

test('logout posts with the bearer token and forgets the tokens; async stores are awaited', async () => {
    let saved = okTokens(1);
    const f = fakeFetch(() => new Response(null, { status: 204 }));
    const auth = createAuthClient({
        baseUrl: BASE,
        getTokens: async () => saved,
        setTokens: async (t) => {
            await new Promise((r) => setTimeout(r, 5));
            saved = t;
        },
        fetch: f.fetch,
    });

    await auth.logout();

    assert.equal(saved, null);
    assert.equal(f.calls[0].url, `${BASE}/auth/logout`);
    assert.equal(f.calls[0].method, 'POST');
    assert.equal(f.calls[0].authorization, `Bearer ${okTokens(1).accessToken}`);

    await auth.logout(); // nothing to end: no request
    assert.equal(f.calls.length, 1);
});

test('logout forgets the tokens even when the server fails, and says so', async () => {
    const st = store(okTokens(1));
    const f = fakeFetch(() => problem(503, 'down'));
    const auth = createAuthClient({ baseUrl: BASE, ...st, fetch: f.fetch });

    await assert.rejects(auth.logout(), { name: 'AuthError', status: 503 });
    assert.deepEqual(st.sets, [null]);
});
