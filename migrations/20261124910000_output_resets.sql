-- An attempt's live output can be withdrawn (a model call failed after streaming, and a
-- fallback provider answers instead). The withdrawn deltas are deleted and one marker row
-- takes the place of the last of them: `reset` set, no text, a running byte total of 0, at
-- seq = (index of the next delta) - 1. So the row with the highest seq still says where the
-- output stands (next index, bytes under the cap), and the snapshot's concatenated text is
-- only what was not withdrawn. An attempt has at most one marker, its lowest row.
-- Adding a column with a constant default rewrites nothing; the CHECK scans the table (live
-- output of running attempts only, so small) under an exclusive lock: give up rather than
-- queue behind a long transaction, and retry at the next start.
SET LOCAL lock_timeout = '5s';
ALTER TABLE task_output_chunks
    ADD COLUMN reset boolean NOT NULL DEFAULT false
        CHECK (NOT reset OR (content = '' AND end_offset = 0));
