-- auth.otp_tickets.ticket_id now holds the SHA-256 (64 hex digits) of the
-- ticket id, which only its requester gets; auth.otp.requested no longer
-- carries it. Whoever reads this table, the outbox or the stream then holds a
-- code without the ticket it opens. Tickets of the old form (live for at
-- most 5 minutes) are dropped: their holders ask for a code again.
DELETE FROM auth.otp_tickets;
COMMENT ON COLUMN auth.otp_tickets.ticket_id IS 'SHA-256 (hex) of the ticket id';
