"""Data: packs authored before explicit items were tagged `pack:<slug>`; give them PackItem rows, and
give installations their pack."""

from django.db import migrations


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    Pack = apps.get_model("marketplace", "Pack")
    PackItem = apps.get_model("marketplace", "PackItem")
    MemCube = apps.get_model("vault", "MemCube")
    Installation = apps.get_model("marketplace", "Installation")
    for pack in Pack.objects.select_related("publisher").iterator():
        tag = f"pack:{pack.slug}"
        cubes = MemCube.objects.filter(namespace_id=pack.publisher.namespace_id).order_by("created_at", "id")
        items = [c for c in cubes if tag in (c.tags or [])]
        PackItem.objects.bulk_create(
            [PackItem(pack=pack, cube=c, position=i) for i, c in enumerate(items)], ignore_conflicts=True
        )
    for inst in Installation.objects.filter(pack__isnull=True).select_related("release"):
        inst.pack_id = inst.release.pack_id
        inst.save(update_fields=["pack"])


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0002_memstore"), ("vault", "0005_canary_flag_and_outbox_dead_letters")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
