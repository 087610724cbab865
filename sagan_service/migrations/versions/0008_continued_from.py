"""continued_from: a train job that continues another one's training, from its checkpoint at
continued_from_step

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("continued_from", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("continued_from_step", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_jobs_continued_from", "jobs", ["continued_from"], ["id"],
                                 ondelete="SET NULL")
        # The job page lists a job's continuations.
        batch.create_index("ix_jobs_continued_from", ["continued_from"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_continued_from")
        batch.drop_constraint("fk_jobs_continued_from", type_="foreignkey")
        batch.drop_column("continued_from_step")
        batch.drop_column("continued_from")
