-- {version}_{name} (down): undo exactly what the forward file did, in reverse order.

SELECT 1;  -- replace with the undo SQL
