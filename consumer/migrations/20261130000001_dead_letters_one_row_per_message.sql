-- One dead letter per failed message also when it carried no usable id:
-- NULLs are distinct in a unique index, so the key takes the id or ''.
DELETE FROM hookline.dead_letters AS later
 USING hookline.dead_letters AS first
 WHERE later.endpoint = first.endpoint
   AND later.stream_sequence = first.stream_sequence
   AND later.event_id IS NULL AND first.event_id IS NULL
   AND later.id > first.id;
DROP INDEX hookline.dead_letters_message;
CREATE UNIQUE INDEX dead_letters_message
    ON hookline.dead_letters (endpoint, stream_sequence, (coalesce(event_id, '')));
