from rest_framework.pagination import LimitOffsetPagination


class CursorlessPagination(LimitOffsetPagination):
    """`?limit=&offset=` with a bounded page size; answers {count, next, previous, results}."""

    default_limit = 50
    max_limit = 200
