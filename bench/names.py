"""Name and place lists for generated clients (a mix found in Montana, accents included)."""

FIRST_NAMES = """
James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara
Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy
Matthew Betty Anthony Sandra Mark Margaret Donald Ashley Steven Kimberly Paul Emily Andrew
Donna Joshua Michelle Kenneth Carol Kevin Amanda Brian Melissa George Deborah Timothy
Stephanie Ronald Rebecca Jason Sharon Edward Laura Jeffrey Cynthia Ryan Dorothy Jacob Amy
Gary Kathleen Nicholas Angela Eric Shirley Jonathan Brenda Stephen Emma Larry Anna Justin
Pamela Scott Nicole Brandon Samantha Benjamin Katherine Samuel Christine Gregory Helen
Alexander Debra Patrick Rachel Frank Carolyn Raymond Janet Jack Maria Dennis Olivia Jerry
Heather Tyler Diane Aaron Julie Jose Joyce Adam Victoria Nathan Ruth Henry Virginia Zachary
Lauren Douglas Kelly Peter Christina Kyle Joan Noah Evelyn Ethan Judith Jeremy Andrea
Walter Hannah Christian Megan Keith Cheryl Roger Jacqueline Terry Martha Austin Madison
Sean Teresa Gerald Gloria Carl Sara Harold Janice Dylan Ann Arthur Kathryn Lawrence Abigail
Jordan Sophia Jesse Frances Bryan Jean Billy Alice Bruce Judy Gabriel Isabella Joe Julia
Logan Grace Alan Amber Juan Denise Albert Danielle Willie Marilyn Elijah Beverly Wayne
Charlotte Randy Natalie Vincent Theresa Mason Diana Roy Brittany Ralph Doris Bobby Kayla
Russell Alexis Bradley Lori Philip Marie Eugene Zoë Chloé René José Renée Siân Inés
Winona Dakota Cheyenne Tallulah Koda Aiyana Takoda Nizhoni Ayita Chayton
""".split()

LAST_NAMES = """
Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris
Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill
Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips
Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook
Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward
Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez
Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan
Bell Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan
Patterson Alexander Hamilton Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant
Herrera Gibson Ellis Tran Medina Aguilar Stevens Murray Ford Castro Marshall Owens Harrison
Fernandez McDonald Woods Washington Kennedy Wells Vargas Henry Chen Freeman Webb Tucker
Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason
Dixon Muñoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox
Warren Mills Meyer Rice Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan
Gardner Payne Grant Dunn Kelley Spencer Hawkins Arnold Pierce Hansen Peters Santos Hart
Bradley Knight Elliott Cunningham Duncan Armstrong Hudson Carroll Lane Riley Andrews
Ray Berry Perkins Hoffman Johnston Matthews Peña Richards Willis Carpenter Lawrence
Sandoval O'Neil O'Brien D'Angelo McCarthy Lindqvist Østergaard Schäfer Nyström Løvik
Runningcrane Old-Person Kills-First Bird-Rattler Wolf-Plume Littlebear Standingrock
Two-Bulls Yellowtail Rides-Horse Fourstar Spotted-Eagle
""".split()

STREETS = """
Main Street|Broadway|Park Avenue|1st Avenue North|2nd Street West|Last Chance Gulch|
Grand Avenue|Central Avenue|Higgins Avenue|Reserve Street|Orange Street|Russell Street|
Montana Avenue|Division Street|Harrison Avenue|Excelsior Avenue|Willow Creek Road|
River Road|Rimrock Road|Shiloh Road|King Avenue West|Custer Avenue|Lyndale Avenue|
Sanders Street|Benton Avenue|Euclid Avenue|Prospect Avenue|Highway 93|Highway 2|
Cottonwood Drive|Aspen Way|Larch Street|Tamarack Lane|Spruce Street|Ponderosa Drive
""".replace("\n", "").split("|")

# Towns with their county and a zip code (the county of a generated client follows).
TOWNS = [
    ("Billings", "Yellowstone", "59101"), ("Missoula", "Missoula", "59801"),
    ("Great Falls", "Cascade", "59401"), ("Bozeman", "Gallatin", "59715"),
    ("Butte", "Silver Bow", "59701"), ("Helena", "Lewis and Clark", "59601"),
    ("Kalispell", "Flathead", "59901"), ("Havre", "Hill", "59501"),
    ("Anaconda", "Deer Lodge", "59711"), ("Miles City", "Custer", "59301"),
    ("Belgrade", "Gallatin", "59714"), ("Livingston", "Park", "59047"),
    ("Laurel", "Yellowstone", "59044"), ("Whitefish", "Flathead", "59937"),
    ("Lewistown", "Fergus", "59457"), ("Sidney", "Richland", "59270"),
    ("Glendive", "Dawson", "59330"), ("Columbia Falls", "Flathead", "59912"),
    ("Polson", "Lake", "59860"), ("Hamilton", "Ravalli", "59840"),
    ("Dillon", "Beaverhead", "59725"), ("Hardin", "Big Horn", "59034"),
    ("Glasgow", "Valley", "59230"), ("Shelby", "Toole", "59474"),
    ("Cut Bank", "Glacier", "59427"), ("Browning", "Glacier", "59417"),
    ("Wolf Point", "Roosevelt", "59201"), ("Conrad", "Pondera", "59425"),
    ("Libby", "Lincoln", "59923"), ("Red Lodge", "Carbon", "59068"),
    ("Deer Lodge", "Powell", "59722"), ("Townsend", "Broadwater", "59644"),
    ("Colstrip", "Rosebud", "59323"), ("Lame Deer", "Rosebud", "59043"),
    ("Poplar", "Roosevelt", "59255"), ("Chinook", "Blaine", "59523"),
    ("Harlowton", "Wheatland", "59036"), ("Big Timber", "Sweet Grass", "59011"),
    ("Thompson Falls", "Sanders", "59873"), ("Plentywood", "Sheridan", "59254"),
]

AGENCY_KINDS = [
    "Community Health Center", "Family Services", "Behavioral Health", "Housing Authority",
    "Public Health Department", "Food Bank", "Youth Services", "Senior Center",
    "Recovery Center", "Community Action Agency", "Tribal Health", "Legal Aid",
    "Job Service", "Domestic Violence Shelter", "Independent Living Center",
]
