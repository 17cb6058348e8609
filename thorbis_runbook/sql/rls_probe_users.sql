-- The user rls.isolation impersonates and a business that user is not a member of, from the
-- Thorbis membership table (a profile is a user's membership of one business): the member
-- with the fewest memberships, lowest id first, so repeated runs pick the same user. No row
-- when fewer than two businesses have members.
WITH memberships AS (
    SELECT p.user_id, array_agg(p.business_id::text ORDER BY p.business_id) AS businesses
      FROM business_core.user_profiles AS p
     GROUP BY p.user_id
), chosen AS (
    SELECT m.user_id, m.businesses
      FROM memberships AS m
     ORDER BY cardinality(m.businesses), m.user_id
     LIMIT 1
)
SELECT chosen.user_id::text,
       chosen.businesses,
       other.business_id::text
  FROM chosen
  CROSS JOIN LATERAL (
        SELECT p.business_id
          FROM business_core.user_profiles AS p
         WHERE NOT p.business_id::text = ANY (chosen.businesses)
         ORDER BY p.business_id
         LIMIT 1) AS other
