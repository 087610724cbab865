"""webhooks: jobs.notify, api_tokens.webhook_secret and the webhook_deliveries table

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("notify", sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.String(length=64), nullable=True))
    tokens = sa.table("api_tokens", sa.column("name", sa.String), sa.column("webhook_secret", sa.String))
    connection = op.get_bind()
    for (name,) in connection.execute(sa.select(tokens.c.name)).all():  # every existing token gets its own
        connection.execute(tokens.update().where(tokens.c.name == name)
                           .values(webhook_secret=secrets.token_hex(32)))
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("webhook_secret", existing_type=sa.String(length=64), nullable=False)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(length=36), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True, index=True),
        sa.Column("answer_code", sa.Integer(), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "url", "sequence"),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("webhook_secret")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("notify")
