-- Every published message is copied into bus.outbox_published (the re-drive
-- window), and two B-trees besides the primary key made that copy cost
-- about as much as the outbox row itself. Nothing reads the window by id
-- (re-drive pages by pos; tools scan); the time filters of re-drive and
-- cleanup work as well on a BRIN index, rows arriving in published_at order.
DROP INDEX bus.outbox_published_id;
DROP INDEX bus.outbox_published_at;
CREATE INDEX outbox_published_at ON bus.outbox_published USING brin (published_at) WITH (autosummarize = on);
