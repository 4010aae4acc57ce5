// Typings for @ecommerce-enterprise/authx-sdk (index.js).

/** What login and refresh return and the store keeps. */
export interface AuthTokens {
    accessToken: string;
    refreshToken: string;
    sessionId: string;
}

/** An RFC 9457 problem+json body as the gateway sends it. */
export interface Problem {
    type?: string;
    title?: string;
    status?: number;
    detail?: string;
    instance?: string;
    requestId?: string;
    [key: string]: unknown;
}

export interface AuthClientOptions {
    /** The API base, e.g. "http://localhost:3003/api/v1/analytics". Its origin is the only one that gets the token. */
    baseUrl: string;
    /** Reads the stored tokens; null when logged out. May be async. */
    getTokens: () => AuthTokens | null | undefined | Promise<AuthTokens | null | undefined>;
    /** Stores new tokens, or null to forget them. May be async (it is awaited). */
    setTokens: (tokens: AuthTokens | null) => void | Promise<void>;
    /** Defaults to the global fetch. */
    fetch?: (input: string, init?: RequestInit) => Promise<Response>;
    /** Milliseconds since the epoch; defaults to Date.now. */
    now?: () => number;
    /** Refresh before a request when the access token expires within this many ms. Default 30000. */
    refreshSkewMs?: number;
}

export type LoginCredentials = { userId: string } | { ticketId: string; code: string };

export interface AuthClient {
    /** POST /auth/dev-login ({userId}) or /auth/otp/verify ({ticketId, code}); stores and returns the tokens. */
    login(credentials: LoginCredentials): Promise<AuthTokens>;
    /**
     * fetch with the bearer token when the target is on baseUrl's origin; a path is
     * appended to baseUrl. Refreshes first when the token is about to expire, and
     * after a 401 refreshes (once, shared with concurrent requests) and retries once,
     * so init.body must be replayable (string, bytes, URLSearchParams, FormData, Blob).
     * Rejects with AuthError when the session cannot be renewed.
     */
    fetchWithAuth(pathOrUrl: string | URL, init?: RequestInit): Promise<Response>;
    /** POST /auth/refresh with the stored refresh token; stores the rotated tokens. Single-flight. */
    refresh(): Promise<AuthTokens>;
    /** POST /auth/logout, then forgets the tokens whatever the answer. */
    logout(): Promise<void>;
}

export declare function createAuthClient(options: AuthClientOptions): AuthClient;

export declare class AuthError extends Error {
    constructor(message: string, options?: { status?: number; problem?: Problem | null });
    name: 'AuthError';
    /** The HTTP status, or 0 when no answer was involved (not logged in). */
    status: number;
    /** The problem's detail, else the message. */
    detail: string;
    /** The gateway's problem+json body, when it sent one. */
    problem: Problem | null;
}
