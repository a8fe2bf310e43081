#!/bin/sh
# One-shot set-up of the stack's MinIO, run by the compose service minio-mc on every `up`
# (each step is idempotent):
#   1. the project's two buckets;
#   2. the policy `skin-app`: list those two buckets and read, write and delete their
#      objects; nothing else (no other bucket, no bucket creation or deletion, no bucket
#      policy, no admin call);
#   3. the app's own MinIO user (S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY), with only that
#      policy. The project's containers use this user; MinIO's root login (MINIO_ROOT_*)
#      stays with the minio server and this script.
# Re-running it with a new S3_SECRET_ACCESS_KEY changes the user's secret.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${S3_PROCESSED_BUCKET:?}" "${S3_MODELS_BUCKET:?}"
: "${S3_ACCESS_KEY_ID:?}" "${S3_SECRET_ACCESS_KEY:?}"
mc alias set skin http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"

mc mb --ignore-existing "skin/$S3_PROCESSED_BUCKET"
mc mb --ignore-existing "skin/$S3_MODELS_BUCKET"

# The policy document is read from stdin (mc reads the file it is given; no temp file).
mc admin policy create skin skin-app /dev/stdin <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "ListTheProjectBuckets",
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": [
        "arn:aws:s3:::$S3_PROCESSED_BUCKET",
        "arn:aws:s3:::$S3_MODELS_BUCKET"
      ]
    },
    {
      "Sid": "ReadWriteTheirObjects",
      "Effect": "Allow",
      "Action": [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"
      ],
      "Resource": [
        "arn:aws:s3:::$S3_PROCESSED_BUCKET/*",
        "arn:aws:s3:::$S3_MODELS_BUCKET/*"
      ]
    }
  ]
}
POLICY

# The user must exist before a policy is attached to it; attaching twice is a no-op.
mc admin user add skin "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY"
mc admin policy attach skin skin-app --user "$S3_ACCESS_KEY_ID"

mc ls skin
