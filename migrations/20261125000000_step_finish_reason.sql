-- A recorded step keeps why its generation stopped, so that an attempt which replays it (the
-- step was recorded, the result was not) reports the model's reason (`max_tokens`, say) instead
-- of `stop`. Rows recorded before this keep NULL, which a replay reads as `stop`, as before.
-- A nullable column without a default and a NOT VALID check change only the catalog; the
-- statement waits at most 5 s for its lock.
SET LOCAL lock_timeout = '5s';

ALTER TABLE task_messages ADD COLUMN finish_reason text;
ALTER TABLE task_messages ADD CONSTRAINT task_messages_finish_reason_shape
    CHECK (finish_reason IS NULL OR (step IS NOT NULL AND length(finish_reason) <= 64)) NOT VALID;
