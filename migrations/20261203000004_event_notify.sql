-- Every worker event is announced on the channel `dals_worker_events` with its id as payload,
-- so each replica's event stream (GET /api/workers/events/stream) pushes events written by
-- any replica. The payload is only the id: listeners read the rows themselves, in order.
CREATE FUNCTION notify_worker_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dals_worker_events', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER worker_events_notify
    AFTER INSERT ON worker_events
    FOR EACH ROW EXECUTE FUNCTION notify_worker_event();
