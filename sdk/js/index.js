// @ecommerce-enterprise/authx-sdk: the client side of AuthX (specs/authx.md §3,
// rows S1–S5). It logs in, adds the bearer token to requests for the gateway's
// origin only, refreshes the token before it expires or after a 401 (one refresh
// at a time, shared by every waiting request) and logs out.
//
// The caller owns token storage through getTokens/setTokens (memory, session
// storage, a file): the client holds nothing but the refresh in flight.
// No dependencies: it needs only fetch, Headers, URL, atob and TextDecoder,
// which browsers and Node 18+ provide.

const DEFAULT_REFRESH_SKEW_MS = 30_000;

/** Every failure of the auth flow: status is the HTTP status, or 0 when no
 * answer was involved (not logged in, malformed reply). */
export class AuthError extends Error {
    constructor(message, { status = 0, problem = null } = {}) {
        super(message);
        this.name = 'AuthError';
        this.status = status;
        this.detail = problem?.detail ?? message;
        this.problem = problem; // the RFC 9457 body when the gateway sent one
    }
}

export function createAuthClient({
    baseUrl,
    getTokens,
    setTokens,
    fetch: fetchImpl,
    now = Date.now,
    refreshSkewMs = DEFAULT_REFRESH_SKEW_MS,
} = {}) {
    if (typeof baseUrl !== 'string' || !baseUrl) throw new TypeError('baseUrl is required');
    if (typeof getTokens !== 'function' || typeof setTokens !== 'function')
        throw new TypeError('getTokens and setTokens are required');

    const base = baseUrl.replace(/\/+$/, '');
    const origin = new URL(base).origin;
    // globalThis.fetch is looked up per call, so a polyfill installed later is
    // honoured, and never called detached from its object (browsers refuse).
    const send = fetchImpl ?? ((url, init) => globalThis.fetch(url, init));
    let refreshing = null; // the one refresh in flight, shared by all callers

    // Relative paths hang under baseUrl; anything with a scheme is used as is.
    function resolve(pathOrUrl) {
        const s = String(pathOrUrl);
        if (/^[a-z][a-z0-9+.-]*:/i.test(s)) return s;
        return base + (s.startsWith('/') ? s : '/' + s);
    }

    function postJson(path, body) {
        return send(base + path, {
            method: 'POST',
            headers: { 'content-type': 'application/json', accept: 'application/json' },
            body: JSON.stringify(body),
        });
    }

    // Reads the answer of a login or refresh, or throws the AuthError it means.
    async function tokensFrom(res, previous) {
        const body = await readJson(res);
        if (!res.ok) throw problemError(res, body);
        const tokens = {
            accessToken: body?.accessToken,
            refreshToken: body?.refreshToken,
            sessionId: body?.sessionId ?? previous?.sessionId,
        };
        if (typeof tokens.accessToken !== 'string' || typeof tokens.refreshToken !== 'string')
            throw new AuthError('the gateway sent no tokens', { status: res.status });
        return tokens;
    }

    // S1: dev-login with {userId}, OTP verification with {ticketId, code}.
    async function login(credentials = {}) {
        let res;
        if (credentials.userId !== undefined) {
            res = await postJson('/auth/dev-login', { userId: credentials.userId });
        } else if (credentials.ticketId !== undefined && credentials.code !== undefined) {
            res = await postJson('/auth/otp/verify', { ticketId: credentials.ticketId, code: credentials.code });
        } else {
            throw new TypeError('login needs {userId} or {ticketId, code}');
        }
        const tokens = await tokensFrom(res, null);
        await setTokens(tokens);
        return tokens;
    }

    // Single flight: callers that arrive while a refresh runs share its result,
    // so N concurrent 401s spend the (rotating) refresh token once (S3).
    function refresh() {
        if (!refreshing) {
            refreshing = refreshOnce().finally(() => {
                refreshing = null;
            });
        }
        return refreshing;
    }

    async function refreshOnce() {
        const current = await getTokens();
        if (!current?.refreshToken) throw new AuthError('not logged in');
        const res = await postJson('/auth/refresh', { refreshToken: current.refreshToken });
        let tokens;
        try {
            tokens = await tokensFrom(res, current);
        } catch (err) {
            // S4: the refresh token is spent or revoked, so the session is over;
            // forget it rather than let every later request try again.
            await setTokens(null);
            throw err;
        }
        await setTokens(tokens); // the refresh token rotated: the old one is dead
        return tokens;
    }

    // S5: true when the access token expires within refreshSkewMs. A token we
    // cannot read is left to the server to judge (it answers 401).
    function expiresSoon(accessToken) {
        const exp = jwtPayload(accessToken)?.exp;
        return typeof exp === 'number' && exp * 1000 - now() < refreshSkewMs;
    }

    // The token to use instead of `seen`, which expires soon or was refused:
    // the one another request already obtained, else the (shared) refresh.
    // Rejects with AuthError when the session has ended.
    async function renew(seen) {
        const latest = await getTokens();
        if (!latest?.accessToken) throw new AuthError('the session has ended', { status: 401 });
        return latest.accessToken === seen ? refresh() : latest;
    }

    async function fetchWithAuth(pathOrUrl, init = {}) {
        const url = resolve(pathOrUrl);
        // S2: the token goes to the gateway's origin and nowhere else.
        if (new URL(url).origin !== origin) return send(url, init);

        let access = (await getTokens())?.accessToken;
        let renewed = false;
        if (access && expiresSoon(access)) {
            access = (await renew(access)).accessToken;
            renewed = true;
        }
        const res = await send(url, withBearer(init, access));
        // One retry at most: a 401 with a renewed token is the answer (no loop, S4).
        if (res.status !== 401 || !access || renewed) return res;
        await discard(res);
        const next = await renew(access);
        return send(url, withBearer(init, next.accessToken));
    }

    // Ends the session on the server (so its refresh token stops working), then
    // forgets the tokens locally whatever the answer. Resolves when the server
    // ended the session (204) or it had already ended (401); throws otherwise.
    async function logout() {
        if (!(await getTokens())?.accessToken) {
            await setTokens(null);
            return;
        }
        try {
            const res = await fetchWithAuth(base + '/auth/logout', { method: 'POST' });
            await discard(res);
            if (!res.ok && res.status !== 401)
                throw new AuthError(`logout failed: HTTP ${res.status}`, { status: res.status });
        } catch (err) {
            if (!(err instanceof AuthError && err.status === 401)) throw err;
        } finally {
            await setTokens(null);
        }
    }

    return { login, fetchWithAuth, refresh, logout };
}

function withBearer(init, accessToken) {
    if (!accessToken) return init;
    const headers = new Headers(init.headers);
    headers.set('authorization', `Bearer ${accessToken}`);
    return { ...init, headers };
}

async function readJson(res) {
    try {
        return JSON.parse(await res.text());
    } catch {
        return null;
    }
}

// Frees the connection of a reply we will not read (undici keeps it otherwise).
async function discard(res) {
    try {
        await res.body?.cancel();
    } catch {
        /* already consumed or closed */
    }
}

function problemError(res, problem) {
    const message = problem?.detail || problem?.title || `HTTP ${res.status}`;
    return new AuthError(message, { status: res.status, problem: problem && typeof problem === 'object' ? problem : null });
}

// The payload of a JWT, unverified (the server verifies; the client only reads
// exp to schedule a refresh), or null when it is not a readable JWT.
function jwtPayload(token) {
    const part = String(token).split('.')[1];
    if (!part) return null;
    try {
        const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
        const bytes = Uint8Array.from(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
        const payload = JSON.parse(new TextDecoder().decode(bytes));
        return payload && typeof payload === 'object' ? payload : null;
    } catch {
        return null;
    }
}
