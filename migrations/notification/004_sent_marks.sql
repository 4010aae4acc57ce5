-- What a networked channel did for a message whose delivery did not commit
-- (a later channel failed or was put off, so its batch rolled back): written
-- at once in a transaction of its own, so a later attempt, after a restart or
-- any number of other messages, does not send it again. Read with the
-- deliveries; rows older than a week are removed as new ones are written.
CREATE TABLE notification.sent_marks (
    message_id uuid                      NOT NULL,
    channel    text COLLATE "C"          NOT NULL,
    status     text                      NOT NULL,
    detail     text                      NOT NULL,
    marked_at  timestamptz DEFAULT now() NOT NULL,
    PRIMARY KEY (message_id, channel)
);
