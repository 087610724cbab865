"""priority: which queued job a free worker takes first (0 low, 1 normal, 2 high), and fair share's index

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="1"))
        batch.create_index("ix_jobs_queue_status_priority", ["queue", "status", "priority"])
        # Fair share looks up each owner's running count and latest start (sagan_service.jobs.claim_next).
        batch.create_index("ix_jobs_owner_started_at", ["owner", "started_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_owner_started_at")
        batch.drop_index("ix_jobs_queue_status_priority")
        batch.drop_column("priority")
