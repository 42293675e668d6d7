// The tables of migrations/{postgres,sqlite}; both histories must produce these columns.

diesel::table! {
    images (id) {
        id -> Text,
        sha256 -> Text,
        source_sha256 -> Text,
        original_filename -> Nullable<Text>,
        description -> Nullable<Text>,
        format -> Text,
        content_type -> Text,
        byte_size -> BigInt,
        width -> Integer,
        height -> Integer,
        original_key -> Text,
        thumbnail_key -> Text,
        thumbnail_content_type -> Text,
        predictions -> Text,
        model_name -> Nullable<Text>,
        model_version -> Nullable<Text>,
        status -> Text,
        delete_token_hash -> Text,
        idempotency_key -> Nullable<Text>,
        created_at -> Timestamp,
        model_sha256 -> Nullable<Text>,
        inference_ms -> Nullable<Double>,
        analysis -> Text,
        top_label -> Nullable<Text>,
        display_key -> Nullable<Text>,
        display_content_type -> Nullable<Text>,
        thumbhash -> Nullable<Text>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Text,
        image_id -> Text,
        event_type -> Text,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        available_at -> Timestamp,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        published_at -> Nullable<Timestamp>,
        digest_id -> Nullable<Text>,
        traceparent -> Nullable<Text>,
    }
}

diesel::table! {
    pending_objects (object_key) {
        object_key -> Text,
        image_id -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    reconcile_runs (id) {
        id -> Text,
        finished_at -> Timestamp,
        repair -> Bool,
        orphans -> BigInt,
        missing_images -> BigInt,
        missing_thumbnails -> BigInt,
        repaired -> BigInt,
        elapsed_ms -> BigInt,
    }
}

diesel::table! {
    upload_sessions (id) {
        id -> Text,
        status -> Text,
        original_filename -> Nullable<Text>,
        description -> Nullable<Text>,
        byte_size -> BigInt,
        content_type -> Text,
        sha256 -> Nullable<Text>,
        image_id -> Nullable<Text>,
        error_code -> Nullable<Text>,
        error_message -> Nullable<Text>,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        claimed_until -> Nullable<Timestamp>,
        finished_at -> Nullable<Timestamp>,
        token_delivered -> Bool,
    }
}
