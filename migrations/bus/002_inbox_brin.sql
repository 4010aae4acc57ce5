-- Every message a service applies inserts one bus.inbox row; its B-tree on
-- received_at cost a second index insertion per message, only for the
-- cleanup of ids past INBOX_RETAIN_S. Rows arrive in received_at order, so a
-- BRIN index (a summary per range of pages, nearly free to keep) finds the
-- old ones just as well; the cleanup takes them without ordering them.
DROP INDEX bus.inbox_received_at;
CREATE INDEX inbox_received_at ON bus.inbox USING brin (received_at) WITH (autosummarize = on);
